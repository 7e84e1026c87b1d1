"""`harness compare` and `harness calibrate`: verdicts on real A/A runs and on a run slowed on purpose.

The `compare_runs` session fixture (conftest) makes the three real runs these tests read.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from conftest import CompareRuns, harness, write_scenario
from harness.analysis.compare import FDR, compare, environment_difference, judge, verdict
from harness.analysis.stats import Observations, false_discovery_q
from harness.errors import HarnessError
from harness.spec.scenario import load_scenario
from harness.store import Store

DECODE = ("decode_tokens_per_s", "itl_ms")  # what a delay per decode step slows down, with e2e_ms
UNSLOWED = ("ttft_ms", "prefill_tokens_per_s", "load_ms", "peak_rss_bytes", "load_peak_rss_bytes", "pss_bytes",
            "weights_bytes", "kv_cache_bytes")  # what it must not touch
MOVED = ("regressed", "improved", "environment differed")


def test_calibrate_stores_noise_per_target(compare_runs: CompareRuns) -> None:
    assert compare_runs.calibrate.returncode == 0, compare_runs.calibrate.stderr[-2000:]
    assert f"noise of the 3 runs {compare_runs.first['run_id']} to {compare_runs.third['run_id']}" in \
        " ".join(compare_runs.calibrate.stdout.split())
    noise = Store(compare_runs.db).noise("tiny-compare")
    assert {metric for target, metric in noise} >= {"ttft_ms", *DECODE, "e2e_ms", "load_ms"}
    assert {target for target, _ in noise} == {"local"}
    assert all(value >= 0 for value in noise.values())
    assert noise[("local", "weights_bytes")] == 0  # the same bytes in both runs
    assert "A/A noise" in compare_runs.calibrate.stdout


def test_aa_against_a_fourth_run_moves_nothing(compare_runs: CompareRuns) -> None:
    # Out of sample: the floor is the stored noise of the three calibration runs, the judged
    # pair the last of them and a fourth run. (A floor from one pair was too low: with a CPU
    # hog running throughout, three runs' itl_ms went 66, 63.5, 57.7 ms, and the first pair's
    # 8 % floor called the second pair's 9 % "improved".) With the hog, timings often read
    # "too noisy to tell"; what matters is that nothing moves.
    changes = compare(compare_runs.third, compare_runs.fourth, Store(compare_runs.db).noise("tiny-compare"))
    assert len(changes) >= 12
    assert {c.metric: c.verdict for c in changes if c.verdict in MOVED} == {}
    verdicts = {c.metric: c.verdict for c in changes}
    assert {verdicts[m] for m in ("weights_bytes", "kv_cache_bytes", "agreement_with_baseline")} == {"unchanged"}
    assert all(c.ratio.kind == "ci95" and c.ratio.processes == 6 for c in changes)


def test_aa_with_a_busy_core_regresses_nothing(compare_runs: CompareRuns) -> None:
    # A CPU-bound process on one of the two cores throughout the loaded run
    states = [s for s in compare_runs.loaded["results"][0]["device_states"] if s["phase"] == "after"]
    assert all(s["other_cpu_s"] / s["window_s"] > 0.8 for s in states), states  # recorded: about one core
    changes = compare(compare_runs.fourth, compare_runs.loaded, Store(compare_runs.db).noise("tiny-compare"))
    assert [c.metric for c in changes if c.verdict in ("regressed", "improved")] == []
    for c in changes:
        assert c.environment and c.environment.startswith("other cpu cores ")  # every verdict carries the figures


def test_cli_aa_compare_exits_0(compare_runs: CompareRuns, tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    done = harness("compare", compare_runs.third["run_id"], compare_runs.fourth["run_id"], "--db", str(compare_runs.db),
                   "--markdown", str(summary))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "regressed" not in done.stdout and "processes per run: 6" in done.stdout
    text = summary.read_text()
    assert text.startswith("## hil-harness compare: tiny-compare") and "unchanged" in text
    assert "95 % interval, 6 processes, 12 requests" in text  # what every interval rests on


def test_slowed_run_records_the_knob(compare_runs: CompareRuns) -> None:
    assert compare_runs.slowed["environment"]["test_delay_ms_per_token"] == compare_runs.delay_ms > 0
    assert "test_delay_ms_per_token" not in compare_runs.fourth["environment"]


def test_a_slower_decode_regresses_decode_only(compare_runs: CompareRuns, tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    done = harness("compare", "--against", "last-good", "--db", str(compare_runs.db), "--markdown", str(summary))
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    changes = {c.metric: c for c in compare(compare_runs.fourth, compare_runs.slowed,
                                            Store(compare_runs.db).noise("tiny-compare"))}
    assert {name: changes[name].verdict for name in DECODE} == dict.fromkeys(DECODE, "regressed"), changes
    # e2e_ms moves less (TTFT is about half of it and unslowed): regressed, too noisy under load, or,
    # where its rise stays under the floor the A/A runs calibrated (a faster CPU's larger TTFT share), unchanged
    e2e = changes["e2e_ms"]
    assert e2e.ratio.value > 1 and e2e.verdict in ("regressed", "too noisy to tell", "unchanged"), e2e
    assert e2e.verdict != "unchanged" or e2e.ratio.value - 1 < e2e.floor, e2e
    assert {name: changes[name].verdict for name in UNSLOWED if changes[name].verdict == "regressed"} == {}
    text = summary.read_text()
    assert f"against `{compare_runs.fourth['run_id']}` (last good)" in text  # the latest un-slowed run
    assert "slowed on purpose" in text and "| **regressed** | decode_tokens_per_s |" in text


def test_junit_xml_carries_the_verdicts(compare_runs: CompareRuns) -> None:
    assert compare_runs.pytest.returncode == 1, compare_runs.pytest.stdout[-3000:]
    case = ET.parse(compare_runs.junit).find(".//testcase")
    properties = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert properties["compared_against"] == f"run {compare_runs.fourth['run_id']}"
    assert properties["compare:decode_tokens_per_s"].startswith("regressed: ratio ")
    assert "(95 % interval, 6 processes, 12 requests)" in properties["compare:decode_tokens_per_s"]
    assert properties["compare:weights_bytes"].startswith("unchanged: ratio 1.00")
    failure = case.find("failure")
    assert failure is not None and "regressed against run" in failure.get("message") + (failure.text or "")


def test_a_regressed_run_is_never_last_good(compare_runs: CompareRuns) -> None:
    store = Store(compare_runs.db)
    assert store.regressed(compare_runs.slowed["run_id"]) and not store.regressed(compare_runs.fourth["run_id"])


def test_compare_needs_two_runs_or_against(compare_runs: CompareRuns) -> None:
    done = harness("compare", compare_runs.first["run_id"], "--db", str(compare_runs.db))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "give BASELINE and CURRENT" in done.stderr


def test_calibrate_needs_two_runs_or_more(tmp_path: Path) -> None:
    done = harness("calibrate", str(write_scenario(tmp_path)), "--runs", "1", "--db", str(tmp_path / "r.sqlite"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--runs: need a whole number of at least 2, got '1'" in done.stderr


# -- the rule, on made-up process values (no timing involved) --------------------------
RNG = np.random.default_rng(7)
BASE = list(100 + RNG.normal(0, 2, 8))  # one value per runner process


def processes(values: list[float]) -> Observations:
    return Observations(tuple(values), tuple(range(len(values))), (None,) * len(values))


def rule(metric: str, baseline: list[float], current: list[float], floor: float,
         environment: str | None = None) -> str:
    """The verdict of one comparison alone (a family of one: q = p)."""
    j = judge(processes(baseline), processes(current))
    return verdict(metric, j, j.p_value, floor, environment)


def test_a_clear_slowdown_regresses_in_the_metric_direction() -> None:
    slower = [v * 1.5 for v in BASE]
    assert rule("itl_ms", BASE, slower, 0.05) == "regressed"  # lower is better
    assert rule("decode_tokens_per_s", BASE, slower, 0.05) == "improved"  # higher is better


def test_a_disturbed_machine_is_not_a_regression() -> None:
    assert rule("itl_ms", BASE, [v * 1.5 for v in BASE], 0.05, "other cpu cores 0.05 -> 1.02") == "environment differed"


def test_a_shift_below_the_floor_is_unchanged() -> None:
    assert rule("itl_ms", BASE, [v * 1.02 for v in BASE], 0.10) == "unchanged"


def test_spread_processes_are_too_noisy() -> None:
    wide = [50, 100, 200, 80, 300]
    assert rule("load_ms", wide, [v * 1.1 for v in wide], 0.05) == "too noisy to tell"


def test_identical_constants_are_unchanged_even_from_few_processes() -> None:
    j = judge(processes([5e8] * 3), processes([5e8] * 3))
    assert (j.ratio.value, j.ratio.interval, j.ratio.kind) == (1.0, (1.0, 1.0), "range")
    assert verdict("weights_bytes", j, j.p_value, 0.05) == "unchanged"


def test_three_processes_cannot_regress() -> None:
    # 3 vs 3 fully separated happens 1 time in 10 under no change at all: not evidence
    assert rule("load_ms", [100, 101, 102], [200, 202, 204], 0.05) == "too few processes"


def test_false_discovery_control_spans_the_comparison() -> None:
    # Alone, 5 vs 5 fully separated is p 0.008; among 40 comparisons with nothing else moving, it is not enough
    j = judge(processes([1.0, 1.1, 1.2, 1.3, 1.4]), processes([2.0, 2.1, 2.2, 2.3, 2.4]))
    q = false_discovery_q([j.p_value] + [0.5] * 39)[0]
    assert j.p_value < FDR < q
    assert verdict("load_ms", j, j.p_value, 0.05) == "regressed"
    assert verdict("load_ms", j, q, 0.05) == "too noisy to tell"


def test_environment_difference_reads_the_recorded_states() -> None:
    def result(other_cpu_s: float, thermal: int | None = None) -> dict:
        state = {"phase": "after", "other_cpu_s": other_cpu_s, "steal_s": 0.0, "window_s": 10.0}
        return {"device_states": [dict(state, repetition=r, **({"thermal_status": thermal} if thermal is not None else {}))
                                  for r in range(5)]}

    assert environment_difference(result(1.0), result(3.0)) is None  # 0.1 vs 0.3 cores
    assert environment_difference(result(1.0), result(10.0)) == "other cpu cores 0.10 -> 1.00"
    assert environment_difference(result(1.0, 0), result(1.0, 2)) == "thermal status 0 -> 2"
    assert environment_difference({}, {}) is None  # AI Hub records no state


def test_unknown_metric_in_min_effect_is_one_line_error(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, compare={"min_effect": {"speed": 0.1}})
    with pytest.raises(HarnessError) as error:
        load_scenario(path)
    message = str(error.value)
    assert message.startswith(f"{path}: compare.min_effect: Value error, unknown metric 'speed'; allowed: default, ")
    assert "\n" not in message
