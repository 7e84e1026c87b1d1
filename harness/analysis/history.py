"""Nightly history: the runs of one scenario as series per (variant, target, metric), with step changes.

Each run's point is its process values (`harness.analysis.stats`: one value per runner
process), so request-, token- and process-level metrics are judged alike. Step rule: at
run i, the process values of the WINDOW runs from i on are compared with those of the
WINDOW runs before i (fewer at the ends, at least one each side) with Mann-Whitney U; the
p-values of all series at run i are one family, controlled with Benjamini-Hochberg at
`compare.FDR`. A step starts at i when its q-value is below FDR and the median moved by at
least the floor (the scenario's `compare.min_effect`, or the calibrated noise when larger;
a symmetric size, see `harness.analysis.compare.change_size`). Of adjacent runs that pass,
the one with the largest change is the step. The verdict says which way the metric went.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import yaml

from harness.analysis.compare import FDR, change_size
from harness.analysis.stats import Observations, false_discovery_q, mann_whitney_rows
from harness.measure.metrics import METRICS
from harness.spec.scenario import ScenarioFile
from harness.store import Store

WINDOW = 3


@dataclass
class Point:
    run_id: str
    started_at: float
    units: list[float]  # one value per runner process
    step: str | None = None  # "regressed" / "improved": a step change starts at this run
    change: float = 1.0  # median of the window from here / median of the window before

    @property
    def median(self) -> float:
        return float(np.median(self.units))


@dataclass
class Series:
    variant: str
    target: str
    metric: str
    emulated: bool
    floor: float = 0.0
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
        for (variant, target, metric), samples in store.run_samples(run.run_id, metrics).items():
            key = (variant, target, metric)
            if key not in series:
                floor = max(effects.effect(metric), noise.get((target, metric), 0.0))
                series[key] = Series(variant, target, metric, emulated.get((variant, target), False), floor)
            series[key].points.append(Point(run.run_id, run.started_at, list(Observations.of_samples(samples).process_values().values())))
    mark_steps(list(series.values()))
    return sorted(series.values(), key=lambda s: (s.variant, s.target, list(METRICS).index(s.metric)))


def mark_steps(series: list[Series]) -> None:
    """Mark the steps of every series, one false-discovery family per run position."""
    candidates: dict[int, list[tuple[int, str, float]]] = defaultdict(list)  # id(series) -> (i, verdict, change)
    for i in range(1, max((len(s.points) for s in series), default=0)):
        family = [s for s in series if i < len(s.points)]
        changes, p_values = _window_tests(family, i)
        for s, change, q in zip(family, changes, false_discovery_q(p_values)):
            if q < FDR and change_size(change) >= s.floor:
                worse = (change > 1) == (METRICS[s.metric].better == "lower")
                candidates[id(s)].append((i, "regressed" if worse else "improved", change))
    for s in series:
        found = candidates[id(s)]
        for i, verdict, change in found:
            rivals = [c for j, v, c in found if abs(j - i) < WINDOW and v == verdict]
            if change_size(change) >= max(change_size(c) for c in rivals):
                s.points[i].step, s.points[i].change = verdict, change


def _window_tests(family: list[Series], i: int) -> tuple[list[float], list[float]]:
    """Per series: (median after / median before, Mann-Whitney p) of the process values of the
    WINDOW runs from i on against the WINDOW runs before; series with windows of the same
    sizes are tested together."""
    windows = [([v for p in s.points[max(0, i - WINDOW):i] for v in p.units],
                [v for p in s.points[i:i + WINDOW] for v in p.units]) for s in family]
    changes, p_values = [0.0] * len(family), [0.0] * len(family)
    shapes: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, (before, after) in enumerate(windows):
        shapes[(len(before), len(after))].append(index)
    for indices in shapes.values():
        before = np.asarray([windows[k][0] for k in indices])
        after = np.asarray([windows[k][1] for k in indices])
        ratios = _ratio(np.median(after, axis=1), np.median(before, axis=1))
        for k, change, p in zip(indices, ratios, mann_whitney_rows(after, before)):
            changes[k], p_values[k] = float(change), float(p)
    return changes, p_values


def _ratio(current: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(current == baseline, 1.0, np.where(baseline != 0, current / baseline, math.inf))


def seconds_per_process(store: Store, scenario: str) -> tuple[float, int] | None:
    """The median wall time of one runner process over the scenario's earlier runs that
    finished ok (run time / processes run), and how many runs that is; None without any."""
    per_run = [(run.ended_at - run.started_at) / processes for run in store.runs(scenario)
               if run.status == "ok" and run.ended_at and (processes := len(store.completed(run.run_id)))]
    return (float(np.median(per_run)), len(per_run)) if per_run else None
