"""Budgets: hard gates from the scenario, checked against a run's medians."""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from harness.spec.scenario import Budget, ScenarioFile, Variant
from harness.targets.base import TargetInfo


@dataclass(frozen=True)
class Verdict:
    budget: Budget
    variant: str
    target: str
    measured: float | None  # the budget's statistic, or its ratio to the baseline's
    passed: bool
    reason: str

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
    for result in document["results"]:
        variant = variant_of(result)
        for budget in spec.budgets:
            if budget.variant.matches(variant):
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

    def verdict(measured: float | None, passed: bool, reason: str) -> Verdict:
        return Verdict(budget, variant, target, measured, passed, reason)

    if result["status"] != "ok":
        return verdict(None, False, f"{name}: variant failed: {result.get('error')}")
    if name not in _metrics(result, budget):
        return verdict(None, False, f"{name}{on}: not measured")
    stat = budget.stat
    measured = _metrics(result, budget)[name][stat]
    what = f"{name}{on} {stat} {measured:.4g}"
    if kind.endswith("_ratio"):
        if reference is None or reference["status"] != "ok" or name not in _metrics(reference, budget):
            return verdict(None, False, f"{name}{on}: no measurement of the reference variant to compare with")
        measured = measured / _metrics(reference, budget)[name][stat]
        what = f"{name}{on} {stat} ratio to {variant_of(reference).key} {measured:.3f}"
    op, passed = ("<=", measured <= limit) if kind.startswith("max") else (">=", measured >= limit)
    return verdict(measured, passed, f"{what} {op} {limit:g}: {'pass' if passed else 'FAIL'}")


def _target_key(target: dict) -> str:
    return TargetInfo(**target).key
