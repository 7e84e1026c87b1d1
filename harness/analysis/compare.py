"""Regression verdicts: every metric of every variant x target of one run against another run.

The runner process is the unit (`harness.analysis.stats`). For each metric:

- the ratio of the two runs' estimates (median of process values, current / baseline), with
  a 95 % interval that resamples each run's processes, or the processes' range when a side
  has fewer than MIN_PROCESSES;
- a two-sided Mann-Whitney U test on the process values, and over the whole comparison
  (every metric x variant x target judged) Benjamini-Hochberg's false discovery control:
  a change is significant when its q-value is below FDR;
- the floor: the larger of the scenario's minimum effect for the metric (`compare.
  min_effect`) and the noise `harness calibrate` measured for it on that target.

regressed / improved: significant and the ratio moved by at least the floor, in the
metric's worse / better direction; but "environment differed" instead when the two runs'
recorded host or device state differs visibly (`environment_difference`). unchanged: the
whole interval (or range) lies within [1 / (1 + floor), 1 + floor]. too few processes:
otherwise, when a side has fewer than MIN_PROCESSES processes. too noisy to tell: otherwise.

Sizes of change are symmetric (`change_size`): a halving and a doubling are both 100 %,
so a floor can be reached in both directions whatever its size.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from harness.analysis.budgets import evaluate, spec_of, variant_of
from harness.errors import HarnessError
from harness.measure.metrics import METRICS
from harness.analysis.results import build_results
from harness.analysis.stats import (MIN_PROCESSES, Estimate, Observations, false_discovery_q, mann_whitney_p,
                                    ratio_between_runs)
from harness.store import RunRecord, Store
from harness.targets.base import TargetInfo

FDR = 0.05  # Benjamini-Hochberg: the expected share of false alarms among the changes called significant
VERDICTS = ("regressed", "improved", "environment differed", "too noisy to tell", "too few processes",
            "unchanged")  # most urgent first
# A side ran on a visibly disturbed machine when, in the median repetition, other processes
# took this many more CPU cores (or the hypervisor stole this many more) than on the other side.
OTHER_CPU_CORES = 0.25
STEAL_CORES = 0.25


@dataclass(frozen=True)
class Change:
    metric: str
    variant: str
    target: str
    emulated: bool
    baseline: float  # estimate: median of the process values
    current: float
    ratio: Estimate  # current / baseline, with its interval and what it rests on
    p_value: float  # Mann-Whitney U on the process values
    q_value: float  # the same, controlled for the false discovery rate over the comparison
    floor: float  # smallest relative change that counts here
    verdict: str
    environment: str | None = None  # how the two runs' machines differed, when they did

    @property
    def interval(self) -> tuple[float, float]:
        return self.ratio.interval


@dataclass(frozen=True)
class Judgement:
    ratio: Estimate
    p_value: float


def judge(baseline: Observations, current: Observations) -> Judgement:
    """The ratio of the runs' estimates and the test on their process values, before any verdict."""
    ratio = ratio_between_runs(current, baseline)
    cur, base = list(current.process_values().values()), list(baseline.process_values().values())
    p = mann_whitney_p(cur, base) if min(len(cur), len(base)) >= MIN_PROCESSES else math.nan
    return Judgement(ratio, p)


def verdict(metric: str, j: Judgement, q_value: float, floor: float, environment: str | None = None) -> str:
    """The verdict on one judged metric (see the module docstring for the rule)."""
    ratio = j.ratio
    if ratio.kind == "ci95" and q_value < FDR and change_size(ratio.value) >= floor:
        if environment:
            return "environment differed"
        worse = (ratio.value > 1) == (METRICS[metric].better == "lower")
        return "regressed" if worse else "improved"
    if max(change_size(ratio.interval[0]), change_size(ratio.interval[1])) <= floor:
        return "unchanged"
    return "too few processes" if ratio.kind == "range" else "too noisy to tell"


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
    paired = list(_paired_metrics(baseline, current))
    judgements = [judge(Observations.of(base), Observations.of(measured)) for *_, base, measured, _ in paired]
    q_values = false_discovery_q([j.p_value for j in judgements])
    environments: dict[tuple[str, str], str | None] = {}
    changes = []
    for (variant, target, name, base, measured, emulated), j, q in zip(paired, judgements, q_values):
        if (variant, target) not in environments:
            environments[(variant, target)] = environment_difference(_result(baseline, variant, target),
                                                                     _result(current, variant, target))
        environment = environments[(variant, target)]
        floor = max(effects.effect(name), noise.get((target, name), 0.0))
        changes.append(Change(name, variant, target, emulated, base["estimate"], measured["estimate"], j.ratio,
                              j.p_value, q, floor, verdict(name, j, q, floor, environment), environment))
    return changes


def environment_difference(baseline: dict, current: dict) -> str | None:
    """How visibly the two results' machines differed, from their recorded states, or None.

    Compared: CPU cores taken by other processes and stolen by the hypervisor during the
    runner processes (median repetition), and the highest thermal status a device reported.
    """
    before, after = _disturbance(baseline), _disturbance(current)
    found = []
    for name, limit in (("other_cpu_cores", OTHER_CPU_CORES), ("steal_cores", STEAL_CORES)):
        if name in before and name in after and abs(after[name] - before[name]) >= limit:
            found.append(f"{name.replace('_', ' ')} {before[name]:.2f} -> {after[name]:.2f}")
    if before.get("thermal_status") != after.get("thermal_status"):
        found.append(f"thermal status {before.get('thermal_status')} -> {after.get('thermal_status')}")
    return "; ".join(found) or None


def _disturbance(result: dict) -> dict[str, float]:
    after = [s for s in result.get("device_states", []) if s["phase"] == "after"]
    figures: dict[str, float] = {}
    windows = [s for s in after if s.get("window_s")]
    for name, key in (("other_cpu_cores", "other_cpu_s"), ("steal_cores", "steal_s")):
        shares = [s[key] / s["window_s"] for s in windows if key in s]
        if shares:
            figures[name] = float(np.median(shares))
    statuses = [s["thermal_status"] for s in result.get("device_states", []) if s.get("thermal_status") is not None]
    if statuses:
        figures["thermal_status"] = max(statuses)
    return figures


def _result(document: dict, variant: str, target: str) -> dict:
    return next(r for r in document["results"] if _keys(r) == (variant, target))


def regressions(changes: Iterable[Change]) -> list[Change]:
    return [c for c in changes if c.verdict == "regressed"]


def aa_noise(runs: list[dict]) -> dict[tuple[str, str], float]:
    """Noise per (target key, metric) from runs of the same build (A/A): how far from 1
    (`change_size`) the interval (or range) of a pair's ratio reaches, the largest over the
    pairs and variants.

    Each run shifts all its processes alike (the machine's state when it ran), and a pair
    shows one draw of that drift; more runs, more draws: with two, the next A/A pair's drift
    exceeds the floor about half the time when drift dominates the processes' own noise.
    """
    noise: dict[tuple[str, str], float] = {}
    for first, second in itertools.combinations(runs, 2):
        for _, target, name, base, measured, _ in _paired_metrics(first, second):
            lo, hi = ratio_between_runs(Observations.of(measured), Observations.of(base)).interval
            reach = max(change_size(lo), change_size(hi))
            if math.isfinite(reach):
                noise[(target, name)] = max(noise.get((target, name), 0.0), reach)
    return noise


def last_good(store: Store, current: RunRecord) -> RunRecord:
    """The latest earlier run of the same scenario that finished, passed every budget, was
    not slowed or damaged by a test knob and was never found regressed."""
    earlier = [r for r in store.runs(current.scenario) if r.started_at < current.started_at]
    for run in reversed(earlier):
        knobbed = run.environment.get("test_delay_ms_per_token") or run.environment.get("test_perturb_language")
        if run.status != "ok" or knobbed or store.regressed(run.run_id):
            continue
        if not any(v.failed for v in evaluate(build_results(store, run.run_id))):
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
