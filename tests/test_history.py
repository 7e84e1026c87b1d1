"""`harness history`: series per (variant, target, metric) over a scenario's runs, with step changes."""

from __future__ import annotations

from conftest import STEP_RUN, CompareRuns, harness
from harness.analysis.history import history
from harness.store import Store


def test_the_planted_steps_are_found_and_nothing_else(wide_store) -> None:
    series = history(Store(wide_store), "wide", ("decode_tokens_per_s", "ttft_ms", "peak_rss_bytes"))
    assert len(series) == 50 * 3 and all(len(s.points) == 100 for s in series)
    stepped = [(s.variant, s.metric, [s.points.index(p) for p in s.steps]) for s in series if s.steps]
    assert stepped == [("fp32-s1-greedy", "decode_tokens_per_s", [STEP_RUN]),
                       ("fp32-s2-greedy", "peak_rss_bytes", [STEP_RUN])]
    decode, memory = (next(s for s in series if s.steps and s.metric == m).steps[0]
                      for m in ("decode_tokens_per_s", "peak_rss_bytes"))
    assert decode.step == "regressed" and 0.55 < decode.change < 0.65
    assert memory.step == "regressed" and 1.15 < memory.change < 1.25  # one sample per process: steps too


def test_slowed_nightly_is_a_step(compare_runs: CompareRuns) -> None:
    series = {s.metric: s for s in history(Store(compare_runs.db), "tiny-compare")}
    assert [(p.run_id, p.step) for p in series["decode_tokens_per_s"].steps] == [
        (compare_runs.slowed["run_id"], "regressed")]
    # nothing else steps: not the unslowed counters, not any counter between the four quiet runs
    assert {m: [p.run_id for p in s.steps] for m, s in series.items() if s.steps and m not in (
        "decode_tokens_per_s", "itl_ms", "e2e_ms")} == {}
    assert all(p.run_id == compare_runs.slowed["run_id"] for s in series.values() for p in s.steps)
    assert series["load_ms"].points[0].units and len(series["load_ms"].points[0].units) == 6  # process values
    done = harness("history", "tiny-compare", "--metric", "decode_tokens_per_s", "--db", str(compare_runs.db))
    assert done.returncode == 0 and "regressed" in done.stdout, done.stderr


def test_unknown_scenario_is_one_line_error(compare_runs: CompareRuns) -> None:
    done = harness("history", "nope", "--db", str(compare_runs.db))
    assert done.returncode == 2 and "no runs of 'nope'; stored: tiny-compare" in done.stderr
    assert "Traceback" not in done.stderr
