"""Regression verdicts: every metric of every variant x target of one run against another run.

A change is judged on the raw samples of both runs:

- the ratio of medians (current / baseline) with a bootstrap 95 % interval;
- a two-sided Mann-Whitney U test at p < ALPHA; when the sample counts cannot reach that
  p (5 vs 5 can reach 0.008, 3 vs 3 only 0.1), the 99 % interval of the ratio must
  exclude 1 instead (asv's fall-back);
- the floor: the larger of the scenario's minimum effect for the metric (`compare.
  min_effect`) and the noise `harness calibrate` measured for it on that target.

regressed / improved: significant and the median moved by at least the floor, in the
metric's worse / better direction. unchanged: otherwise, when the 95 % interval of the
ratio lies within [1 / (1 + floor), 1 + floor]. too noisy to tell: otherwise (or fewer
than MIN_SAMPLES samples on a side).

Sizes of change are symmetric (`change_size`): a halving and a doubling are both 100 %,
so a floor can be reached in both directions whatever its size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from harness.analysis.budgets import evaluate, spec_of, variant_of
from harness.errors import HarnessError
from harness.measure.metrics import METRICS
from harness.analysis.results import build_results
from harness.analysis.stats import mann_whitney_p, ratio_with_interval, smallest_p
from harness.store import RunRecord, Store
from harness.targets.base import TargetInfo

ALPHA = 0.01
MIN_SAMPLES = 3
VERDICTS = ("regressed", "improved", "too noisy to tell", "unchanged")  # most urgent first


@dataclass(frozen=True)
class Change:
    metric: str
    variant: str
    target: str
    emulated: bool
    baseline: float  # median
    current: float  # median
    ratio: float  # current / baseline median
    interval: tuple[float, float]  # bootstrap 95 % interval of the ratio
    p_value: float
    floor: float  # smallest relative change that counts here
    verdict: str


@dataclass(frozen=True)
class Judgement:
    ratio: float
    interval: tuple[float, float]
    p_value: float
    verdict: str


def judge(metric: str, baseline: list[float], current: list[float], floor: float) -> Judgement:
    """The verdict on one metric's samples (see the module docstring for the rule)."""
    ratio, interval = ratio_with_interval(current, baseline)
    if min(len(baseline), len(current)) < MIN_SAMPLES:
        return Judgement(ratio, interval, math.nan, "too noisy to tell")
    p = mann_whitney_p(current, baseline)
    if smallest_p(len(current), len(baseline)) < ALPHA:
        significant = p < ALPHA
    else:
        lo, hi = ratio_with_interval(current, baseline, level=0.99)[1]
        significant = lo > 1 or hi < 1
    if significant and change_size(ratio) >= floor:
        worse = (ratio > 1) == (METRICS[metric].better == "lower")
        return Judgement(ratio, interval, p, "regressed" if worse else "improved")
    if max(change_size(interval[0]), change_size(interval[1])) <= floor:
        return Judgement(ratio, interval, p, "unchanged")
    return Judgement(ratio, interval, p, "too noisy to tell")


def change_size(ratio: float) -> float:
    """How far a ratio is from 1, the same both ways: 0.5 and 2.0 are both 1.0 (100 %)."""
    if not 0 < ratio < math.inf:
        return math.inf  # from or to zero; NaN too
    return max(ratio, 1 / ratio) - 1


def compare(baseline: dict, current: dict, noise: dict[tuple[str, str], float] | None = None) -> list[Change]:
    """Every metric measured in both runs, per variant x target present in both.

    `noise` is the calibrated noise per (target key, metric), a floor for "regressed".
    """
    effects = spec_of(current).compare
    noise = noise or {}
    changes = []
    for variant, target, name, base, measured, emulated in _paired_metrics(baseline, current):
        floor = max(effects.effect(name), noise.get((target, name), 0.0))
        j = judge(name, base["samples"], measured["samples"], floor)
        changes.append(Change(name, variant, target, emulated, base["median"], measured["median"],
                              j.ratio, j.interval, j.p_value, floor, j.verdict))
    return changes


def regressions(changes: Iterable[Change]) -> list[Change]:
    return [c for c in changes if c.verdict == "regressed"]


def aa_noise(first: dict, second: dict) -> dict[tuple[str, str], float]:
    """Noise per (target key, metric) from two runs of the same build (A/A): how far from 1
    (`change_size`) the 95 % interval of their ratio of medians reaches, the largest over the variants."""
    noise: dict[tuple[str, str], float] = {}
    for _, target, name, base, measured, _ in _paired_metrics(first, second):
        lo, hi = ratio_with_interval(measured["samples"], base["samples"])[1]
        reach = max(change_size(lo), change_size(hi))
        if math.isfinite(reach):
            noise[(target, name)] = max(noise.get((target, name), 0.0), reach)
    return noise


def last_good(store: Store, current: RunRecord) -> RunRecord:
    """The latest earlier run of the same scenario that finished, passed every budget, was
    not slowed by the test knob and was never found regressed."""
    earlier = [r for r in store.runs(current.scenario) if r.started_at < current.started_at]
    for run in reversed(earlier):
        if run.status != "ok" or run.environment.get("test_delay_ms_per_token") or store.regressed(run.run_id):
            continue
        if all(v.passed for v in evaluate(build_results(store, run.run_id))):
            return run
    raise HarnessError(f"{store.path}: --against last-good: no earlier good run of scenario {current.scenario!r} "
                       f"before {current.run_id}")


def _paired_metrics(baseline: dict, current: dict) -> Iterator[tuple[str, str, str, dict, dict, bool]]:
    """(variant, target, metric, baseline summary, current summary, emulated) for every metric
    measured in both runs, per variant x target present in both."""
    before = {_keys(r): r for r in baseline["results"]}
    for result in current["results"]:
        variant, target = _keys(result)
        base = before.get((variant, target))
        if base is None:
            continue
        for name, measured in result["metrics"].items():
            if name in base["metrics"]:
                yield variant, target, name, base["metrics"][name], measured, result["target"]["emulated"]


def _keys(result: dict) -> tuple[str, str]:
    return variant_of(result).key, TargetInfo(**result["target"]).key
