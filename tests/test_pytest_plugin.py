"""`pytest scenarios/`: one item per variant x target; budgets fail with variant, value, limit."""

from __future__ import annotations

import json

from conftest import PROMPTS


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
