"""Budgets have three outcomes, judged on the interval over runner processes, on made-up runs."""

from __future__ import annotations

import yaml

from harness.analysis.budgets import evaluate
from harness.analysis.results import summarize_metrics
from harness.cli import run_exit_code
from harness.spec.variant import Variant
from harness.store import Sample

TARGET = {"kind": "local", "name": "local", "serial": "ci", "model": "cpu", "soc": "x86_64", "emulated": False}
PROMPTS = ("a", "b")


def document(budgets: list[dict], speeds: dict[str, list[float]]) -> dict:
    """A run of two variants; speeds[precision][r] is decode_tokens_per_s of process r (both prompts)."""
    spec = {"name": "b", "variants": {"precision": ["fp32", "fp16"]}, "baseline": {"precision": "fp32"},
            "workload": {"prompts": "prompts.jsonl"}, "budgets": budgets}
    results = []
    for precision, values in speeds.items():
        samples = [Sample("decode_tokens_per_s", v, r, p) for r, v in enumerate(values) for p in PROMPTS]
        variant = Variant(precision=precision)
        results.append({"variant": variant.as_dict(), "target": TARGET, "metrics": summarize_metrics(samples),
                        "metrics_by_kind": {}, "status": "ok"})
    return {"scenario": {"yaml": yaml.safe_dump(spec)}, "results": results}


def outcome(budget: dict, speeds: dict[str, list[float]]) -> tuple[str, str]:
    verdicts = [v for v in evaluate(document([budget], speeds)) if v.variant.startswith("fp16")]
    assert len(verdicts) == 1
    return verdicts[0].outcome, verdicts[0].reason


FP32 = [40.0, 41.0, 39.0, 40.5, 39.5]


def test_pass_needs_the_whole_interval_on_the_right_side() -> None:
    budget = {"metric": "decode_tokens_per_s", "variant": {"precision": "fp16"}, "min": 30}
    result, reason = outcome(budget, {"fp32": FP32, "fp16": [45.0, 46.0, 44.0, 45.5, 44.5]})
    assert result == "pass" and "(95 % interval, 5 processes, 10 requests) >= 30: pass" in reason
    assert outcome(budget, {"fp32": FP32, "fp16": [20.0, 21.0, 22.0, 20.5, 21.5]})[0] == "fail"


def test_an_interval_across_the_bound_is_inconclusive_whatever_the_point() -> None:
    # The median process is above the bound (31), but the processes reach from 25 to 37
    budget = {"metric": "decode_tokens_per_s", "variant": {"precision": "fp16"}, "min": 30}
    result, reason = outcome(budget, {"fp32": FP32, "fp16": [25.0, 31.0, 37.0, 26.0, 36.0]})
    assert result == "inconclusive" and reason.endswith(">= 30: inconclusive")


def test_ratios_are_paired_per_repetition_and_prompt() -> None:
    # Each repetition's load hits both variants; fp16 is 1.5x fp32 in every pair
    load = [1.0, 0.5, 1.4, 0.7, 1.2]
    speeds = {"fp32": [40 * f for f in load], "fp16": [60 * f for f in load]}
    budget = {"metric": "decode_tokens_per_s", "variant": {"precision": "fp16"}, "min_ratio": 1.4}
    result, reason = outcome(budget, speeds)
    assert result == "pass" and "ratio to fp32-s1-greedy 1.500 [1.5, 1.5]" in reason


def test_few_processes_give_a_range_and_say_so() -> None:
    budget = {"metric": "decode_tokens_per_s", "variant": {"precision": "fp16"}, "min": 30}
    result, reason = outcome(budget, {"fp32": FP32[:3], "fp16": [29.0, 35.0, 36.0]})
    assert result == "inconclusive" and "(range, 3 processes, 6 requests)" in reason


def test_exit_code_says_which() -> None:
    inconclusive = {"metric": "decode_tokens_per_s", "variant": {"precision": "fp16"}, "min": 30}
    straddling = {"fp32": FP32, "fp16": [25.0, 31.0, 37.0, 26.0, 36.0]}
    doc = document([inconclusive], straddling)
    assert run_exit_code(doc, evaluate(doc)) == 3
    doc = document([{**inconclusive, "decisive": True}], straddling)
    verdict = next(v for v in evaluate(doc) if v.variant.startswith("fp16"))
    assert verdict.failed and verdict.reason.endswith(": INCONCLUSIVE")
    assert run_exit_code(doc, evaluate(doc)) == 1
    doc = document([{**inconclusive, "min": 10}], straddling)
    assert run_exit_code(doc, evaluate(doc)) == 0
