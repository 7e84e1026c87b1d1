"""`pytest scenarios/`: one item per variant x target; budgets fail with variant, value, limit."""

from __future__ import annotations

import json

from conftest import PROMPTS
from harness.store import Store


def _scenario_dir(pytester, budgets: list[dict]) -> None:
    folder = pytester.path / "scenarios"
    folder.mkdir()
    (folder / "prompts.jsonl").write_text("\n".join(json.dumps(p) for p in PROMPTS))
    (folder / "tiny.yaml").write_text(json.dumps({
        "name": "tiny",
        "variants": {"precision": ["fp32", "fp16"]},
        "baseline": {"precision": "fp32"},
        "workload": {"prompts": "prompts.jsonl", "max_new_tokens": 3, "repetitions": 1, "warmup": 0},
        "budgets": budgets,
    }))


def test_items_per_variant_and_budget_failure_message(pytester) -> None:
    _scenario_dir(pytester, [
        {"metric": "weights_bytes", "variant": {"precision": "fp16"}, "max": 1000},
        {"metric": "weights_bytes", "variant": {"precision": "fp32"}, "min": 1000},
    ])
    result = pytester.runpytest_subprocess("scenarios", "-v", "-p", "no:cacheprovider",
                                           "--harness-db", str(pytester.path / "db.sqlite"))
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*tiny.yaml::fp32-s1-greedy@local PASSED*",
        "*tiny.yaml::fp16-s1-greedy@local FAILED*",
        "*budget missed:*",
        "*fp16-s1-greedy on local: weights_bytes median 2.*e+08 ?2.*e+08, 2.*e+08? (range, 1 process) <= 1000: FAIL*",
    ])
    assert (pytester.path / "db.sqlite").exists()


def test_bad_scenario_is_a_one_line_collection_error(pytester) -> None:
    _scenario_dir(pytester, [{"metric": "speed", "max": 1}])
    result = pytester.runpytest_subprocess("scenarios", "-p", "no:cacheprovider")
    assert result.ret == 2
    result.stdout.fnmatch_lines(["*tiny.yaml: budgets.0.metric: Value error, unknown metric 'speed'; allowed: *"])
    assert "Traceback" not in result.stdout.str()


def test_xdist_workers_take_a_device_each_into_one_run(pytester, server) -> None:
    """`pytest scenarios/ -n 2` on two emulated phones: each phone's items run in one worker
    (grouped by device), both workers' parts land in one run of the shared store."""
    _scenario_dir(pytester, [])
    db = pytester.path / "db.sqlite"
    result = pytester.runpytest_subprocess("scenarios", "-v", "-p", "no:cacheprovider", "-n", "2",
                                           "--harness-db", str(db), "--harness-target", "adb")
    result.assert_outcomes(passed=4)
    workers: dict[str, set[str]] = {}
    lines = [line.split() for line in result.stdout.lines if "PASSED" in line and "@adb:" in line]
    for words in lines:
        worker = next(w for w in words if w.startswith("[gw"))
        item = next(w for w in words if "@adb:" in w)
        workers.setdefault(item.split("@")[1], set()).add(worker)
    assert sorted(workers) == ["adb:emu-galaxy-s24", "adb:emu-galaxy-s25"]
    assert all(len(seen) == 1 for seen in workers.values()), workers  # one worker per device
    store = Store(db)
    (run,) = store.runs()
    assert sorted((r.variant_key, r.target_key, r.status) for r in store.results(run.run_id)) == [
        (variant, target, "ok") for variant in ("fp16-s1-greedy", "fp32-s1-greedy")
        for target in ("adb:emu-galaxy-s24", "adb:emu-galaxy-s25")]
