"""Statistics over raw samples: summaries with a 95 % interval, and ratios between variants.

Intervals are percentile bootstraps (of the median unless said) with a fixed seed, so the same samples
always give the same interval. With few samples the interval is wide, as it should be.
Two runs are compared with Mann-Whitney U (scipy), a test on ranks that assumes no shape
of the distribution, as asv does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
_SEED = 20261121
Stat = Literal["median", "mean"]
_STATS = {"median": np.median, "mean": np.mean}


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    mean: float
    stdev: float
    ci95: tuple[float, float]
    p50: float
    p90: float
    p99: float


def summarize(samples: list[float]) -> Summary:
    values = np.asarray(samples, dtype=float)
    if values.size == 0:
        raise ValueError("no samples to summarize")
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return Summary(
        n=int(values.size),
        median=float(np.median(values)),
        mean=float(values.mean()),
        stdev=float(values.std(ddof=1)) if values.size > 1 else 0.0,
        ci95=bootstrap_interval(values),
        p50=float(p50),
        p90=float(p90),
        p99=float(p99),
    )


def ratio_with_interval(current: list[float], baseline: list[float], stat: Stat = "median",
                        level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """stat(current) / stat(baseline) with a bootstrap interval of that ratio (0 / 0 counts as 1)."""
    cur, base = np.asarray(current, dtype=float), np.asarray(baseline, dtype=float)
    rng = np.random.default_rng(_SEED)
    ratios = _ratio(_resampled(cur, rng, stat), _resampled(base, rng, stat))
    point = float(_ratio(_STATS[stat](cur), _STATS[stat](base)))
    tail = (1 - level) / 2 * 100
    lo, hi = np.nanpercentile(ratios, [tail, 100 - tail]) if np.isfinite(ratios).any() else (np.nan, np.nan)
    return point, (float(lo), float(hi))


def bootstrap_interval(samples: list[float], stat: Stat = "median") -> tuple[float, float]:
    """The 95 % percentile-bootstrap interval of the samples' median or mean."""
    values = np.asarray(samples, dtype=float)
    lo, hi = np.percentile(_resampled(values, np.random.default_rng(_SEED), stat), [2.5, 97.5])
    return float(lo), float(hi)


def mann_whitney_p(current: list[float], baseline: list[float]) -> float:
    """Two-sided Mann-Whitney U p-value; 1.0 when every sample has the same value."""
    from scipy.stats import mannwhitneyu  # here: importing scipy.stats costs every CLI command 1.1 s

    if len(set(current) | set(baseline)) == 1:
        return 1.0
    return float(mannwhitneyu(current, baseline, alternative="two-sided").pvalue)


def smallest_p(n_current: int, n_baseline: int) -> float:
    """The smallest two-sided p-value Mann-Whitney U can give for these sample counts (5 vs 5: 2/252)."""
    return 2 / math.comb(n_current + n_baseline, n_current)


def _ratio(current: np.ndarray | float, baseline: np.ndarray | float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((current == 0) & (baseline == 0), 1.0, np.divide(current, baseline))


def _resampled(values: np.ndarray, rng: np.random.Generator, stat: Stat) -> np.ndarray:
    # values: [n] -> the statistic of BOOTSTRAP_RESAMPLES resamples with replacement: [R]
    picks = rng.integers(0, values.size, size=(BOOTSTRAP_RESAMPLES, values.size))
    return _STATS[stat](values[picks], axis=1)
