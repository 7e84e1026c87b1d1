from __future__ import annotations

import statistics

import pytest

from harness.analysis.stats import bootstrap_interval, ratio_with_interval, summarize


def test_summary_matches_textbook_values() -> None:
    values = [10.0, 12.0, 11.0, 13.0, 50.0]
    s = summarize(values)
    assert (s.n, s.median, s.mean) == (5, 12.0, statistics.mean(values))
    assert s.stdev == pytest.approx(statistics.stdev(values))
    assert min(values) <= s.ci95[0] <= s.median <= s.ci95[1] <= max(values)
    assert s.p50 == 12.0 and s.p90 > s.p50


def test_summary_is_reproducible_and_handles_one_sample() -> None:
    assert summarize([1.0, 2.0, 3.0]) == summarize([1.0, 2.0, 3.0])
    one = summarize([4.0])
    assert (one.median, one.stdev, one.ci95) == (4.0, 0.0, (4.0, 4.0))
    with pytest.raises(ValueError):
        summarize([])


def test_ratio_of_medians_and_its_interval() -> None:
    base = [10.0, 11.0, 9.0, 10.5, 9.5, 10.0]
    ratio, (lo, hi) = ratio_with_interval([2 * v for v in base], base)
    assert ratio == pytest.approx(2.0)
    assert lo <= 2.0 <= hi and hi - lo < 0.5


def test_intervals_of_the_mean_follow_the_mean_not_the_median() -> None:
    # DS2D's lossless check is a mean of 0/1 flags: its median says 1 while a third of prompts diverge
    flags = [1.0] * 8 + [0.0] * 4
    lo, hi = bootstrap_interval(flags, "mean")
    assert lo < 2 / 3 < hi < 1.0
    assert bootstrap_interval(flags)[1] == 1.0  # the median cannot show it
    ratio, (lo, hi) = ratio_with_interval(flags, [1.0] * 12, stat="mean")
    assert ratio == pytest.approx(2 / 3) and lo < ratio < hi
