"""Scenario files: valid ones load; bad ones give one line naming file and field, exit 2."""

from __future__ import annotations

import pytest

from conftest import REPO, harness, write_scenario
from harness import runtimes
from harness.errors import HarnessError
from harness.spec.scenario import Variant, load_scenario


def test_smoke_scenario_loads_with_baseline_first() -> None:
    scenario = load_scenario(REPO / "scenarios" / "smoke.yaml")
    assert scenario.variants[0] == scenario.baseline == Variant("fp32")
    assert {v.precision for v in scenario.variants} == {"fp32", "fp16"}
    assert scenario.prompts and len(scenario.sha256) == 64


def test_demo_runs_the_four_techniques_each_checked_against_a_claim() -> None:
    scenario = load_scenario(REPO / "scenarios" / "demo.yaml")
    variants = scenario.variants
    assert scenario.baseline == Variant("fp16") == variants[0]
    assert {v.precision for v in variants} == {"fp16", "int4"}
    assert any(v.streams == 3 and len(v.adapters) == 3 for v in variants)
    assert any(v.decoding == "ds2d" for v in variants)
    assert {v.lora_mode for v in variants if v.adapters and v.streams == 1} == {"runtime", "merged"}
    claims = [b.claim for b in scenario.spec.budgets]
    assert all(claims) and {c.technique for c in claims} == {
        "INT4 weights", "multi-stream decoding", "DS2D", "runtime LoRA inputs"}


@pytest.mark.parametrize("path", sorted((REPO / "scenarios").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_scenario_loads(path) -> None:
    # `make bench` runs demo, paper and graph through the pytest plugin; here they only load
    scenario = load_scenario(path)
    assert scenario.baseline in scenario.variants and scenario.prompts


def test_variant_matrix_is_the_product_of_its_axes(tmp_path) -> None:
    path = write_scenario(tmp_path, variants={"precision": ["fp16", "fp32"], "streams": [1], "decoding": ["greedy"]})
    scenario = load_scenario(path)
    assert [v.key for v in scenario.variants] == ["fp32-s1-greedy", "fp16-s1-greedy"]


def test_hash_changes_when_prompts_change(tmp_path) -> None:
    path = write_scenario(tmp_path)
    before = load_scenario(path).sha256
    (tmp_path / "prompts.jsonl").write_text('{"id": "x", "prompt": "Say hi."}\n')
    assert load_scenario(path).sha256 != before


BAD = {
    "unknown precision": ({"variants": {"precision": ["fp32", "int3"]}}, "variants.precision.1", "'fp32', 'fp16' or 'int4'"),
    "not supported yet": ({"variants": {"decoding": ["ds2d"], "adapters": [["formal"]]}}, "variants",
                          "ds2d' with adapters is not supported yet; supported: greedy"),
    "negative repetitions": ({"workload": {"prompts": "prompts.jsonl", "repetitions": -1}}, "workload.repetitions", "greater than 0"),
    "missing prompts file": ({"workload": {"prompts": "nowhere.jsonl"}}, "workload.prompts", "file not found"),
    "unknown key": ({"colour": "blue"}, "colour", "Extra inputs are not permitted"),
    "unknown runtime": ({"variants": {"runtime": ["mlc"]}}, "variants.runtime.0", "'reference', 'llamacpp', 'genie' or"),
    "runtime cannot serve": ({"variants": {"runtime": ["llamacpp"], "precision": ["fp16"], "adapters": [["formal"]],
                                           "lora_mode": ["merged"]}},
                             "variants", "variant fp16-s1-greedy-formal-merged-llamacpp: runtime 'llamacpp': applies "
                                         "adapters with --lora"),
    "runtime the target cannot run": ({"variants": {"runtime": ["genie"], "precision": ["int4"]},
                                       "baseline": {"runtime": "genie"}},
                                      "targets", "target 'local' cannot run runtime 'genie'; it runs on: adb"),
    "genie without its SDK": ({"variants": {"runtime": ["genie"], "precision": ["int4"]}, "targets": ["adb"],
                               "baseline": {"runtime": "genie"}, "genie": {"models": {"int4": "bundle"}}},
                              "genie.sdk", "needed by variant int4-s1-greedy-genie"),
    "chat prompt to llama-batched": ({"variants": {"include": [{"runtime": "llamacpp", "streams": 2,
                                                               "prefill": "shared"}]},
                                      "baseline": {"runtime": "reference"}},
                                     "variants", "takes raw prompts only; prompt 'capital' has template 'chat'"),
    "forecast drafter without ds2d": ({"variants": {"drafter": ["forecast"]}}, "variants",
                                      "drafter 'forecast' drafts for decoding 'ds2d' only"),
    "forecast tokens missing": ({"variants": {"include": [{"decoding": "ds2d", "drafter": "forecast"}]},
                                 "baseline": {"decoding": "greedy"}, "forecast_dir": "nowhere"}, "forecast_dir", "nowhere/smollm2-135m-instruct.safetensors is missing"),
    "wrong type": ({"workload": {"prompts": "prompts.jsonl", "max_new_tokens": "many"}}, "workload.max_new_tokens", "valid integer"),
    "unknown target": ({"targets": ["toaster"]}, "targets", "allowed: local"),
    "unknown budget metric": ({"budgets": [{"metric": "speed", "max": 1}]}, "budgets.0.metric", "allowed: load_ms"),
    "suite language not in the suite": ({"workload": {"suite": str(REPO / "fixtures/accuracy"), "languages": ["en", "xx"]}},
                                        "workload.languages", "xx not in the suite; allowed: en, ko"),
    "prompts and a suite": ({"workload": {"prompts": "prompts.jsonl", "suite": "anywhere"}}, "workload",
                            "give exactly one of prompts, suite"),
    "a change bound without per": ({"budgets": [{"metric": "chrf", "min_delta": -1}]}, "budgets.0",
                                   "min_delta judges the accuracy grid: give per"),
    "a per budget on a latency": ({"budgets": [{"metric": "ttft_ms", "per": "language", "max": 1}]}, "budgets.0",
                                  "ttft_ms is not in the accuracy grid"),
    "gemma on the reference engine": ({"model": "gemma3-270m"}, "variants",
                                      "the reference engine runs LLaMA-family models; model gemma3-270m runs on"),
    "baseline selects nothing": ({"baseline": {"precision": "fp16"}, "variants": {"precision": ["fp32"]}}, "baseline", "selects 0"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_scenario_is_one_line_naming_file_and_field_exit_2(tmp_path, case: str) -> None:
    fields, field, allowed = BAD[case]
    path = write_scenario(tmp_path, **fields)
    result = harness("run", str(path), "--db", str(tmp_path / "db.sqlite"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"harness: error: {path}: {field}")
    assert allowed in lines[0]
    assert not (tmp_path / "db.sqlite").exists(), "nothing runs for a bad scenario"


def test_bad_prompt_line_names_file_line_and_field(tmp_path) -> None:
    path = write_scenario(tmp_path, prompts=[{"id": "a", "prompt": "hi"}, {"id": "b", "text": "oops"}])
    with pytest.raises(HarnessError, match=r"prompts.jsonl:2: prompt: Field required"):
        load_scenario(path)


def test_missing_scenario_file(tmp_path) -> None:
    result = harness("run", str(tmp_path / "none.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"harness: error: {tmp_path / 'none.yaml'}: scenario file not found"


def test_include_adds_explicit_variants_without_duplicates(tmp_path) -> None:
    path = write_scenario(tmp_path, variants={
        "precision": ["fp32", "fp16"],
        "include": [{"precision": "fp16"}, {"precision": "fp32", "decoding": "greedy"}],
    })
    assert [v.key for v in load_scenario(path).variants] == ["fp32-s1-greedy", "fp16-s1-greedy"]


def test_variant_keys_name_non_default_modes() -> None:
    variant = Variant("int4", 3, "greedy", ("formal", "polite", "jovial"), "runtime", "shared")
    assert variant.key == "int4-s3-greedy-formal+polite+jovial-shared-prefill"
    assert Variant.from_dict(variant.as_dict()) == variant
    assert Variant("fp16", 1, "greedy", ("formal",), "merged").key == "fp16-s1-greedy-formal-merged"
    assert Variant("int4", graph="compiled").key == "int4-s1-greedy-compiled"


@pytest.mark.parametrize("fields, problem", [
    ({"streams": 3, "adapters": ("a", "b")}, "3 streams need 3 adapters"),
    ({"streams": 2, "decoding": "ds2d"}, "multi-stream decoding is greedy"),
    ({"lora_mode": "merged"}, "'merged' needs adapters and one stream"),
    ({"prefill": "shared"}, "'shared' needs more than one stream"),
    ({"precision": "int4", "adapters": ("a",), "lora_mode": "merged"}, "merging into int4 would requantize"),
    ({"decoding": "ds2d", "graph": "compiled"}, "graph 'compiled' is not supported yet"),
    ({"decoding": "lookup"}, "runtime 'reference': no decoding 'lookup'"),
    ({"runtime": "llamacpp", "decoding": "ds2d"}, "runtime 'llamacpp': no decoding 'ds2d'"),
    ({"runtime": "llamacpp", "streams": 2, "adapters": ("a", "b"), "prefill": "shared"},
     "cannot give the sequences of one batch different LoRA adapters"),
    ({"runtime": "llamacpp", "streams": 2}, "prefill 'shared'"),
    ({"runtime": "genie"}, "runtime 'genie': runs QNN context binaries compiled for fp16 or int4"),
    ({"runtime": "executorch", "precision": "fp16", "streams": 2}, "runtime 'executorch': runs one stream"),
])
def test_impossible_combinations_are_named(fields: dict, problem: str) -> None:
    assert problem in runtimes.problem(Variant(**{"precision": "fp32", **fields}))


def test_budget_against_and_kind_are_checked(tmp_path) -> None:
    path = write_scenario(tmp_path, budgets=[{"metric": "e2e_ms", "against": {"precision": "int4"}, "max_ratio": 1}])
    with pytest.raises(HarnessError, match=r"budgets.0.against: must select exactly one variant, selects 0"):
        load_scenario(path)
    path = write_scenario(tmp_path, budgets=[{"metric": "e2e_ms", "kind": "poetry", "max": 1}])
    with pytest.raises(HarnessError, match=r"budgets.0.kind: no prompt of kind 'poetry'; kinds: open"):
        load_scenario(path)
