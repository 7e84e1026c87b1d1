"""Statistics over raw samples: summaries with a 95 % interval, and ratios between variants.

Intervals are percentile bootstraps of the median with a fixed seed, so the same samples
always give the same interval. With few samples the interval is wide, as it should be.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
_SEED = 20261121


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
        ci95=_bootstrap_ci(values),
        p50=float(p50),
        p90=float(p90),
        p99=float(p99),
    )


def ratio_of_medians(current: list[float], baseline: list[float]) -> tuple[float, tuple[float, float]]:
    """median(current) / median(baseline) with a bootstrap 95 % interval of that ratio."""
    cur, base = np.asarray(current, dtype=float), np.asarray(baseline, dtype=float)
    rng = np.random.default_rng(_SEED)
    cur_medians = _resampled_medians(cur, rng)
    base_medians = _resampled_medians(base, rng)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = cur_medians / base_medians
        point = float(np.median(cur) / np.median(base))
    lo, hi = np.nanpercentile(ratios, [2.5, 97.5]) if np.isfinite(ratios).any() else (np.nan, np.nan)
    return point, (float(lo), float(hi))


def _bootstrap_ci(values: np.ndarray) -> tuple[float, float]:
    medians = _resampled_medians(values, np.random.default_rng(_SEED))
    lo, hi = np.percentile(medians, [2.5, 97.5])
    return float(lo), float(hi)


def _resampled_medians(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # values: [n] -> medians of BOOTSTRAP_RESAMPLES resamples with replacement: [R]
    picks = rng.integers(0, values.size, size=(BOOTSTRAP_RESAMPLES, values.size))
    return np.median(values[picks], axis=1)
