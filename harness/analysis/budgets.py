"""Budgets: hard gates from the scenario, with three outcomes.

A budget is a claim about the population of runs, so it is judged on the estimate's
interval (`harness.analysis.stats`: the runner process is the unit), not on a point:
pass when the whole interval is on the right side of the bound, fail when it is wholly
on the wrong side, inconclusive when it straddles the bound. With fewer than
MIN_PROCESSES processes the interval is the processes' range, and the reason says so.
A budget with `decisive: true` counts an inconclusive outcome as a failure. Ratio budgets
pair the two variants per (repetition, prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import yaml

from harness.analysis import grid
from harness.analysis.stats import Estimate, Observations, estimate, paired_ratio
from harness.spec.scenario import Budget, ScenarioFile, Variant
from harness.targets.base import TargetInfo

Outcome = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True)
class Verdict:
    budget: Budget
    variant: str
    target: str
    measured: Estimate | None  # the budget's statistic, or its ratio to the reference variant's
    outcome: Outcome
    reason: str
    where: tuple[str, str] | None = None  # per budgets: the grid row's (language, task), "all" for a whole axis

    @property
    def passed(self) -> bool:
        return self.outcome == "pass"

    @property
    def failed(self) -> bool:
        """A failure, or an inconclusive outcome where the budget asks for a decisive one."""
        return self.outcome == "fail" or (self.outcome == "inconclusive" and self.budget.decisive)

    @property
    def text(self) -> str:
        return f"{self.variant} on {self.target}: {self.reason}"


def variant_of(result: dict) -> Variant:
    return Variant.from_dict(result["variant"])


def spec_of(document: dict) -> ScenarioFile:
    return ScenarioFile.model_validate(yaml.safe_load(document["scenario"]["yaml"]))


def evaluate(document: dict) -> list[Verdict]:
    """Every budget of the run's scenario against every result it applies to."""
    spec = spec_of(document)
    verdicts = []
    scored = {(entry["variant"], _target_key(entry["target"])): entry for entry in document.get("accuracy", [])}
    for result in document["results"]:
        variant = variant_of(result)
        for budget in spec.budgets:
            if budget.variant.matches(variant) and budget.per:
                verdicts += _check_grid(budget, result, scored.get((variant.key, _target_key(result["target"]))))
            elif budget.variant.matches(variant):
                against = budget.against or spec.baseline
                reference = next((r for r in document["results"]
                                  if r["target"] == result["target"] and against.matches(variant_of(r))), None)
                verdicts.append(_check(budget, result, reference))
    return verdicts


def _metrics(result: dict, budget: Budget) -> dict:
    return result["metrics"] if budget.kind is None else result["metrics_by_kind"].get(budget.kind, {})


def _check(budget: Budget, result: dict, reference: dict | None) -> Verdict:
    kind, limit = budget.bound
    name = budget.metric
    variant, target = variant_of(result).key, _target_key(result["target"])
    on = f" on {budget.kind} prompts" if budget.kind else ""

    def verdict(measured: Estimate | None, outcome: Outcome, reason: str) -> Verdict:
        return Verdict(budget, variant, target, measured, outcome, reason)

    if result["status"] != "ok":
        return verdict(None, "fail", f"{name}: variant failed: {result.get('error')}")
    if name not in _metrics(result, budget):
        return verdict(None, "fail", f"{name}{on}: not measured")
    mine = Observations.of(_metrics(result, budget)[name])
    if kind.endswith("_ratio"):
        if reference is None or reference["status"] != "ok" or name not in _metrics(reference, budget):
            return verdict(None, "fail", f"{name}{on}: no measurement of the reference variant to compare with")
        try:
            measured = paired_ratio(mine, Observations.of(_metrics(reference, budget)[name]), budget.stat)
        except ValueError:
            return verdict(None, "fail", f"{name}{on}: no repetition and prompt measured on both variants")
        what = f"{name}{on} {budget.stat} ratio to {variant_of(reference).key} {measured.value:.3f}"
    else:
        measured = estimate(mine, budget.stat)
        what = f"{name}{on} {budget.stat} {measured.value:.4g}"
    lo, hi = measured.interval
    op, outcome = _judge(kind, limit, lo, hi)
    return verdict(measured, outcome, f"{what} [{lo:.4g}, {hi:.4g}] ({measured.basis}) {op} {limit:g}: "
                                      f"{_SHOWN[budget.decisive][outcome]}")


def _judge(kind: str, limit: float, lo: float, hi: float) -> tuple[str, Outcome]:
    """An interval against a bound: pass when wholly on its side, fail when wholly across it."""
    if kind.startswith("max"):
        return "<=", "pass" if hi <= limit else "fail" if lo > limit else "inconclusive"
    return ">=", "pass" if lo >= limit else "fail" if hi < limit else "inconclusive"


def _check_grid(budget: Budget, result: dict, comparison: dict | None) -> list[Verdict]:
    """A per budget in each row of the variant's accuracy grid (items as the unit, harness.analysis.grid)."""
    variant, target = variant_of(result).key, _target_key(result["target"])
    kind, limit = budget.bound
    stat = budget.grid_stat
    if result["status"] != "ok":
        return [Verdict(budget, variant, target, None, "fail", f"{budget.metric}: variant failed: {result.get('error')}")]
    if comparison is None:
        return []  # the variant is what the others are scored against
    rows = [c for c in comparison["cells"] if c["metric"] == budget.metric and c["stat"] == stat
            and _in_rows(c, budget.per)]
    if not rows:
        return [Verdict(budget, variant, target, None, "fail", f"{budget.metric} per {budget.per}: not measured")]
    verdicts = []
    for cell in rows:
        lo, hi = cell["interval"]
        op, outcome = _judge(kind, limit, lo, hi)
        where = "/".join(part for part in (cell["language"], cell["task"]) if part != grid.ALL)
        what = "change" if stat == "delta" else stat
        rests = f"{cell['n']} items" if cell["basis"] == "items" else cell["basis"]
        reason = (f"{budget.metric} {what} in {where} vs {comparison['against']} {cell['value']:.4g} "
                  f"[{lo:.4g}, {hi:.4g}] (95 % interval, {rests}) {op} {limit:g}: "
                  f"{_SHOWN[budget.decisive][outcome]}")
        verdicts.append(Verdict(budget, variant, target, None, outcome, reason, (cell["language"], cell["task"])))
    return verdicts


def _in_rows(cell: dict, per: str) -> bool:
    language, task = cell["language"] != grid.ALL, cell["task"] != grid.ALL
    return {"language": language and not task, "task": task and not language, "cell": language and task}[per]


_SHOWN = {decisive: {"pass": "pass", "fail": "FAIL", "inconclusive": "INCONCLUSIVE" if decisive else "inconclusive"}
          for decisive in (True, False)}


def _target_key(target: dict) -> str:
    return TargetInfo(**target).key
