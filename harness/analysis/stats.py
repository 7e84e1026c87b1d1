"""Statistics with the runner process as the unit.

Requests inside one runner process share its load, caches, clocks and neighbours, and the
token gaps of one request share even more, so neither is an independent observation. Every
estimate here therefore reduces within a process first:

1. a cell is one (process, prompt): the median (or mean) of its samples;
2. a process's value is the median (mean) over its cells: every process ran every prompt,
   so prompts are strata that each resample keeps whole;
3. the estimate is the median (mean) of the process values; its 95 % interval is a
   percentile bootstrap that resamples processes (a cluster bootstrap, scipy.stats.bootstrap).

With fewer than MIN_PROCESSES processes there is no 95 % interval of anything: the
interval is then the range of the process values, and says so (`kind == "range"`).

Ratios between two variants of one run are paired: the variants ran the same prompts in
interleaved repetitions, so each (repetition, prompt) cell gives a ratio and a repetition's
value is the median of its cells' ratios. Ratios between two runs are not paired: each
run's processes are resampled on their own.

Two runs are tested with Mann-Whitney U on their process values (scipy), and a family of
such tests with Benjamini-Hochberg's false discovery control (scipy).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
MIN_PROCESSES = 5  # fewer: the interval is the range of the processes (5 vs 5 can reach p 2/252)
_SEED = 20261121
EXACT_UP_TO = 40  # values on both sides together for an exact Mann-Whitney p-value
if TYPE_CHECKING:
    from harness.store import Sample
Stat = Literal["median", "mean"]
_STATS = {"median": np.median, "mean": np.mean}  # over arrays
_REDUCE = {"median": statistics.median, "mean": statistics.fmean}  # over the few values of one cell or process


@dataclass(frozen=True)
class Observations:
    """One metric's raw samples with where each came from: its runner process (repetition)
    and its prompt (None for a counter measured once per process)."""

    values: tuple[float, ...]
    repetitions: tuple[int, ...]
    prompts: tuple[str | None, ...]

    @staticmethod
    def of_samples(samples: Iterable[Sample]) -> Observations:
        rows = [(s.value, s.repetition, s.prompt_id) for s in samples]
        return Observations(tuple(r[0] for r in rows), tuple(r[1] for r in rows), tuple(r[2] for r in rows))

    @staticmethod
    def of(entry: dict) -> Observations:
        """From a metric of the results document (`samples`, `sample_repetitions`, `sample_prompts`)."""
        return Observations(tuple(entry["samples"]), tuple(entry["sample_repetitions"]), tuple(entry["sample_prompts"]))

    def cells(self, stat: Stat = "median") -> dict[tuple[int, str | None], float]:
        """(repetition, prompt) -> the stat of that prompt's samples in that process."""
        grouped: dict[tuple[int, str | None], list[float]] = defaultdict(list)
        for value, repetition, prompt in zip(self.values, self.repetitions, self.prompts):
            grouped[(repetition, prompt)].append(value)
        return {key: float(_REDUCE[stat](values)) for key, values in grouped.items()}

    def process_values(self, stat: Stat = "median") -> dict[int, float]:
        """repetition -> the stat over its prompts' cells."""
        return _per_repetition(self.cells(stat), stat)

    @property
    def requests(self) -> int:
        """(process, prompt) cells that hold samples; 0 for a once-per-process counter."""
        return len({(r, p) for r, p in zip(self.repetitions, self.prompts) if p is not None})


@dataclass(frozen=True)
class Estimate:
    value: float
    interval: tuple[float, float]
    kind: Literal["ci95", "range"]  # range: fewer than MIN_PROCESSES processes (on a side)
    processes: int  # on the smaller side, for a ratio between runs
    requests: int

    @property
    def basis(self) -> str:
        """What the interval is and what it rests on, for reports."""
        what = "95 % interval" if self.kind == "ci95" else "range"
        requests = f", {_count(self.requests, 'request')}" if self.requests else ""
        return f"{what}, {_count(self.processes, 'process')}{requests}"


@dataclass(frozen=True)
class Summary:
    """Descriptive numbers of the raw samples (n, median, percentiles), and the estimate."""

    n: int
    median: float
    mean: float
    stdev: float
    p50: float
    p90: float
    p99: float
    estimate: Estimate


def summarize(observations: Observations) -> Summary:
    values = np.asarray(observations.values, dtype=float)
    if values.size == 0:
        raise ValueError("no samples to summarize")
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return Summary(
        n=int(values.size),
        median=float(np.median(values)),
        mean=float(values.mean()),
        stdev=float(values.std(ddof=1)) if values.size > 1 else 0.0,
        p50=float(p50), p90=float(p90), p99=float(p99),
        estimate=estimate(observations),
    )


def estimate(observations: Observations, stat: Stat = "median") -> Estimate:
    """The stat of the process values, with a cluster-bootstrap interval (or their range)."""
    units = np.asarray(list(observations.process_values(stat).values()))
    return _estimate(units, observations.requests, stat)


def paired_ratio(current: Observations, baseline: Observations, stat: Stat = "median") -> Estimate:
    """current / baseline of two variants of one run, paired per (repetition, prompt) cell.

    Only cells both sides have are paired; 0 / 0 counts as 1.
    """
    mine, theirs = current.cells(stat), baseline.cells(stat)
    ratios = {key: float(_ratio(mine[key], theirs[key])) for key in mine.keys() & theirs.keys()}
    if not ratios:
        raise ValueError("no (repetition, prompt) pair measured on both sides")
    units = np.asarray(list(_per_repetition(ratios, "median").values()))
    return _estimate(units, sum(1 for _, prompt in ratios if prompt is not None), "median")


def ratio_between_runs(current: Observations, baseline: Observations) -> Estimate:
    """median(current processes) / median(baseline processes), each run resampled on its own."""
    cur = np.asarray(list(current.process_values().values()))
    base = np.asarray(list(baseline.process_values().values()))
    point = float(_ratio(np.median(cur), np.median(base)))
    processes = min(cur.size, base.size)
    requests = min(current.requests, baseline.requests)
    if processes < MIN_PROCESSES:
        extremes = _ratio(np.array([cur.min(), cur.max()]), np.array([base.max(), base.min()]))
        return Estimate(point, (float(extremes[0]), float(extremes[1])), "range", processes, requests)
    lo, hi = _bootstrap((cur, base), lambda c, b, axis: _ratio(np.median(c, axis=axis), np.median(b, axis=axis)))
    return Estimate(point, (lo, hi), "ci95", processes, requests)


def mann_whitney_p(current: list[float], baseline: list[float]) -> float:
    """Two-sided Mann-Whitney U p-value of two sets of process values; 1.0 when all are equal."""
    return float(mann_whitney_rows(np.asarray([current], dtype=float), np.asarray([baseline], dtype=float))[0])


def mann_whitney_rows(current: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Mann-Whitney U p-values (two-sided) of many tests at once: row i of current [k, n] against
    row i of baseline [k, m]. 1.0 for a row whose values are all equal.

    Exact where a row has no ties and few values (scipy's own choice is exact only up to 8 a
    side: 9 vs 9 fully separated is p 4e-5 exactly, 4e-4 by the normal approximation).
    """
    from scipy.stats import mannwhitneyu  # here: importing scipy.stats costs every CLI command 1.1 s

    both = np.sort(np.concatenate([current, baseline], axis=1), axis=1)
    constant = both[:, 0] == both[:, -1]
    tied = (np.diff(both, axis=1) == 0).any(axis=1) & ~constant
    p = np.ones(len(both))
    exact_ok = both.shape[1] <= EXACT_UP_TO
    for rows, method in ((~constant & ~tied, "exact" if exact_ok else "asymptotic"), (tied, "asymptotic")):
        if rows.any():
            p[rows] = mannwhitneyu(current[rows], baseline[rows], alternative="two-sided", method=method, axis=1).pvalue
    return p


def false_discovery_q(p_values: list[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (q) of one family of tests; NaN stays NaN."""
    from scipy.stats import false_discovery_control

    finite = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    q = [math.nan] * len(p_values)
    if finite:
        for i, value in zip(finite, false_discovery_control([p_values[i] for i in finite], method="bh")):
            q[i] = float(value)
    return q


def _estimate(units: np.ndarray, requests: int, stat: Stat) -> Estimate:
    point = float(_STATS[stat](units))
    if units.size < MIN_PROCESSES:
        return Estimate(point, (float(units.min()), float(units.max())), "range", int(units.size), requests)
    lo, hi = _bootstrap((units,), lambda u, axis: _STATS[stat](u, axis=axis))
    return Estimate(point, (lo, hi), "ci95", int(units.size), requests)


def _bootstrap(samples: tuple[np.ndarray, ...], statistic) -> tuple[float, float]:
    """Percentile 95 % interval; the fixed seed makes the same samples give the same interval."""
    from scipy.stats import bootstrap

    if all(np.ptp(s) == 0 for s in samples):  # nothing to resample: the interval is the value
        value = float(statistic(*(s[None, :] for s in samples), axis=-1)[0])
        return value, value
    result = bootstrap(samples, statistic, n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                       vectorized=True, rng=np.random.default_rng(_SEED))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('s') else 's'}"


def _per_repetition(cells: dict[tuple[int, str | None], float], stat: Stat) -> dict[int, float]:
    by_repetition: dict[int, list[float]] = defaultdict(list)
    for (repetition, _), value in sorted(cells.items(), key=lambda item: (item[0][0], str(item[0][1]))):
        by_repetition[repetition].append(value)
    return {r: float(_REDUCE[stat](values)) for r, values in by_repetition.items()}


def _ratio(current: np.ndarray | float, baseline: np.ndarray | float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((np.asarray(current) == 0) & (np.asarray(baseline) == 0), 1.0, np.divide(current, baseline))
