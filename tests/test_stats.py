"""Statistics with the runner process as the unit, on made-up samples of known shape."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from harness.analysis.stats import (Observations, estimate, false_discovery_q, paired_ratio, ratio_between_runs,
                                    summarize)

RNG = np.random.default_rng(11)


def observations(per_process: list[list[float]], prompts: tuple[str | None, ...] = ("a", "b")) -> Observations:
    """Process r's samples, spread over the prompts in turn."""
    rows = [(v, r, prompts[i % len(prompts)]) for r, values in enumerate(per_process) for i, v in enumerate(values)]
    return Observations(*(tuple(column) for column in zip(*rows)))


def token_gaps(offsets: list[float], gaps: int = 100) -> Observations:
    """Token gaps of one process share its offset (its load, clocks); within it they barely vary."""
    return observations([list(50 + offset + RNG.normal(0, 0.1, gaps)) for offset in offsets])


def test_descriptive_numbers_are_of_the_raw_samples() -> None:
    values = [10.0, 12.0, 11.0, 13.0, 50.0]
    s = summarize(observations([[v] for v in values], (None,)))
    assert (s.n, s.median, s.mean) == (5, 12.0, statistics.mean(values))
    assert s.stdev == pytest.approx(statistics.stdev(values))
    assert s.p50 == 12.0 and s.p90 > s.p50
    assert summarize(observations([[1.0], [2.0], [3.0]])) == summarize(observations([[1.0], [2.0], [3.0]]))
    with pytest.raises(ValueError):
        summarize(Observations((), (), ()))


def test_the_interval_rests_on_processes_not_on_token_gaps() -> None:
    # 500 gaps from 5 processes whose medians are 50, 55, 60, 65, 70 ms: the estimate's
    # uncertainty is the spread of processes. Pooled, the gaps' bootstrap interval of the
    # median would be about +-1 ms wide; the processes say it is anywhere from ~55 to ~65.
    e = estimate(token_gaps([0, 5, 10, 15, 20]))
    assert (e.kind, e.processes, e.requests) == ("ci95", 5, 10)
    assert e.value == pytest.approx(60, abs=0.2)
    lo, hi = e.interval
    assert lo <= 55.5 and hi >= 64.5
    assert e.basis == "95 % interval, 5 processes, 10 requests"


def test_with_fewer_than_five_processes_the_interval_is_their_range() -> None:
    e = estimate(token_gaps([0, 4, 9]))
    assert (e.kind, e.processes) == ("range", 3)
    assert e.interval[0] == pytest.approx(50, abs=0.1) and e.interval[1] == pytest.approx(59, abs=0.1)
    assert e.basis.startswith("range, 3 processes")


def test_a_process_counter_has_processes_and_no_requests() -> None:
    e = estimate(observations([[100.0], [101.0], [102.0], [103.0], [104.0], [105.0]], (None,)))
    assert (e.value, e.processes, e.requests) == (102.5, 6, 0)
    assert 100 <= e.interval[0] < e.interval[1] <= 105


def test_identical_processes_give_a_point_interval() -> None:
    e = estimate(observations([[5e8]] * 5, (None,)))
    assert (e.value, e.interval, e.kind) == (5e8, (5e8, 5e8), "ci95")


def test_ratios_of_two_variants_are_paired_per_repetition_and_prompt() -> None:
    # Each repetition runs both variants close in time; its load (a shared factor, 1x to 3x)
    # hits both. Paired, the ratio is exactly 2; unpaired, the load's spread swamps it.
    load = [1.0, 1.5, 2.0, 2.5, 3.0, 1.2]
    base = observations([[10 * f, 20 * f] for f in load])
    doubled = observations([[20 * f, 40 * f] for f in load])
    paired = paired_ratio(doubled, base)
    assert (paired.value, paired.interval, paired.processes, paired.requests) == (2.0, (2.0, 2.0), 6, 12)
    unpaired = ratio_between_runs(doubled, base)
    assert unpaired.value == pytest.approx(2.0)
    assert unpaired.interval[0] < 1.5 and unpaired.interval[1] > 2.5


def test_pairs_only_what_both_sides_measured() -> None:
    base = observations([[1.0, 1.0]] * 5)
    one_prompt = observations([[3.0]] * 5)  # prompt "a" only
    assert paired_ratio(one_prompt, base).value == 3.0
    with pytest.raises(ValueError):
        paired_ratio(observations([[1.0]] * 5, ("c",)), base)


def test_the_mean_shows_what_the_median_cannot() -> None:
    # DS2D's lossless check is a 0/1 flag per request: every process diverges on one of four prompts
    flags = observations([[1.0, 1.0, 1.0, 0.0]] * 5, ("a", "b", "c", "d"))
    assert estimate(flags, "median").value == 1.0
    mean = estimate(flags, "mean")
    assert (mean.value, mean.interval) == (0.75, (0.75, 0.75))


def test_false_discovery_control_is_benjamini_hochberg() -> None:
    p = [0.001, 0.008, 0.039, 0.041, 0.5, float("nan")]
    q = false_discovery_q(p)
    m = 5
    expected = [min(1.0, min(p[j] * m / (j + 1) for j in range(i, m))) for i in range(m)]
    assert q[:5] == pytest.approx(expected)
    assert np.isnan(q[5])
