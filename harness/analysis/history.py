"""Nightly history: the runs of one scenario as series per (variant, target, metric), with step changes.

Step rule: at run i, the raw samples of the WINDOW runs from i on are compared with those
of the WINDOW runs before i (fewer at the ends, at least one each side). A step starts
at i when Mann-Whitney U gives p < ALPHA and the median moved by at least the floor
(a symmetric size, see `harness.analysis.compare.change_size`)
(the scenario's `compare.min_effect`, or the calibrated noise when larger). Of adjacent
runs that pass, the one with the largest change is the step. The verdict says which way
the metric went: regressed or improved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import yaml

from harness.analysis.compare import ALPHA, change_size
from harness.measure.metrics import METRICS
from harness.spec.scenario import ScenarioFile
from harness.analysis.stats import mann_whitney_p
from harness.store import Store

WINDOW = 3


@dataclass
class Point:
    run_id: str
    started_at: float
    samples: list[float]
    step: str | None = None  # "regressed" / "improved": a step change starts at this run
    change: float = 1.0  # median of the window from here / median of the window before

    @property
    def median(self) -> float:
        return float(np.median(self.samples))


@dataclass
class Series:
    variant: str
    target: str
    metric: str
    emulated: bool
    points: list[Point] = field(default_factory=list)

    @property
    def steps(self) -> list[Point]:
        return [p for p in self.points if p.step]


def history(store: Store, scenario: str, metrics: tuple[str, ...] | None = None,
            until: str | None = None) -> list[Series]:
    """Every series of the scenario's runs (up to run `until`), oldest run first, with steps marked."""
    runs = store.runs(scenario)
    if until is not None:
        runs = runs[:[r.run_id for r in runs].index(until) + 1] if until in {r.run_id for r in runs} else []
    if not runs:
        return []
    effects = ScenarioFile.model_validate(yaml.safe_load(runs[-1].scenario_yaml)).compare
    noise = store.noise(scenario)
    emulated = {(r.variant_key, r.target_key): r.target.get("emulated", False)
                for run in runs for r in store.results(run.run_id)}
    series: dict[tuple[str, str, str], Series] = {}
    for run in runs:
        for (variant, target, metric), values in store.run_samples(run.run_id, metrics).items():
            key = (variant, target, metric)
            if key not in series:
                series[key] = Series(variant, target, metric, emulated.get((variant, target), False))
            series[key].points.append(Point(run.run_id, run.started_at, values))
    for s in series.values():
        mark_steps(s, max(effects.effect(s.metric), noise.get((s.target, s.metric), 0.0)))
    return sorted(series.values(), key=lambda s: (s.variant, s.target, list(METRICS).index(s.metric)))


def mark_steps(series: Series, floor: float) -> None:
    points = series.points
    candidates: list[tuple[int, str, float]] = []
    for i in range(1, len(points)):
        before = [v for p in points[max(0, i - WINDOW):i] for v in p.samples]
        after = [v for p in points[i:i + WINDOW] for v in p.samples]
        change = _ratio(float(np.median(after)), float(np.median(before)))
        if change_size(change) >= floor and mann_whitney_p(after, before) < ALPHA:
            worse = (change > 1) == (METRICS[series.metric].better == "lower")
            candidates.append((i, "regressed" if worse else "improved", change))
    for i, verdict, change in candidates:
        rivals = [c for j, v, c in candidates if abs(j - i) < WINDOW and v == verdict]
        if change_size(change) >= max(change_size(c) for c in rivals):
            points[i].step, points[i].change = verdict, change


def _ratio(current: float, baseline: float) -> float:
    if current == baseline:
        return 1.0
    return current / baseline if baseline else math.inf
