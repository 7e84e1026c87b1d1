"""Budgets: hard gates from the scenario, checked against a run's medians."""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from harness.scenario import Budget, ScenarioFile, Variant
from harness.targets import TargetInfo


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
    v = result["variant"]
    return Variant(v["precision"], v["streams"], v["decoding"], tuple(v["adapters"]))


def spec_of(document: dict) -> ScenarioFile:
    return ScenarioFile.model_validate(yaml.safe_load(document["scenario"]["yaml"]))


def evaluate(document: dict) -> list[Verdict]:
    """Every budget of the run's scenario against every result it applies to."""
    spec = spec_of(document)
    verdicts = []
    for result in document["results"]:
        variant = variant_of(result)
        baseline = next((r for r in document["results"]
                         if r["target"] == result["target"] and spec.baseline.matches(variant_of(r))), None)
        for budget in spec.budgets:
            if budget.variant.matches(variant):
                verdicts.append(_check(budget, result, baseline))
    return verdicts


def _check(budget: Budget, result: dict, baseline: dict | None) -> Verdict:
    kind, limit = budget.bound
    name = budget.metric
    variant, target = variant_of(result).key, _target_key(result["target"])

    def verdict(measured: float | None, passed: bool, reason: str) -> Verdict:
        return Verdict(budget, variant, target, measured, passed, reason)

    if result["status"] != "ok":
        return verdict(None, False, f"{name}: variant failed: {result.get('error')}")
    if name not in result["metrics"]:
        return verdict(None, False, f"{name}: not measured")
    stat = budget.stat
    measured = result["metrics"][name][stat]
    what = f"{name} {stat} {measured:.4g}"
    if kind.endswith("_ratio"):
        if baseline is None or baseline["status"] != "ok" or name not in baseline["metrics"]:
            return verdict(None, False, f"{name}: no baseline measurement to compare with")
        measured = measured / baseline["metrics"][name][stat]
        what = f"{name} {stat} ratio to baseline {measured:.3f}"
    op, passed = ("<=", measured <= limit) if kind.startswith("max") else (">=", measured >= limit)
    return verdict(measured, passed, f"{what} {op} {limit:g}: {'pass' if passed else 'FAIL'}")


def _target_key(target: dict) -> str:
    return TargetInfo(**target).key
