"""The paper's techniques through the whole pipeline: scenario -> runner -> store -> JSON.

Engine-level correctness lives in test_ds2d, test_lora, test_multistream and test_int4;
this checks that each technique's counters reach the results document, with the lossless
DS2D check (matches_greedy) run in fp32 where it must hold.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, harness, write_scenario

PROMPTS = [
    {"id": "sum", "kind": "summarize", "prompt": "Summarize in one sentence: The lighthouse keeper lit the lamp "
     "every night. Ships passed safely. The lighthouse keeper lit the lamp every night for forty years."},
    {"id": "open", "kind": "open", "prompt": "Write a short sentence about the sea."},
]
STYLES = ["formal", "jovial"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("techniques")


@pytest.fixture(scope="module")
def document(folder: Path) -> dict:
    scenario = write_scenario(
        folder, PROMPTS,
        variants={"precision": ["fp32"], "include": [
            {"precision": "fp32", "decoding": "ds2d"},
            {"precision": "fp16", "decoding": "ds2d", "drafter": "forecast"},
            {"precision": "fp32", "adapters": STYLES},
            {"precision": "fp32", "adapters": STYLES, "lora_mode": "merged"},
            {"precision": "fp32", "streams": 2, "adapters": STYLES},
            {"precision": "fp32", "graph": "compiled"},
        ]},
        baseline={"precision": "fp32", "decoding": "greedy", "adapters": [], "graph": "eager"},
        adapters_dir=str(REPO / "fixtures" / "adapters"),
        forecast_dir=str(REPO / "fixtures" / "forecast"),
        workload={"prompts": "prompts.jsonl", "max_new_tokens": 10, "repetitions": 1, "warmup": 0},
    )
    out = folder / "results.json"
    process = harness("run", str(scenario), "--db", str(folder / "r.sqlite"), "--json", str(out),
                      "--report", str(folder / "r.html"))
    assert process.returncode == 0, process.stderr[-2000:]
    return json.loads(out.read_text())


def result(document: dict, **variant) -> dict:
    return next(r for r in document["results"] if variant.items() <= r["variant"].items())


def test_ds2d_reports_its_counters_and_matches_greedy_in_fp32(document: dict) -> None:
    metrics = result(document, decoding="ds2d", drafter="ngram")["metrics"]
    for name in ("tokens_per_step", "acceptance_rate", "draft_ms", "verify_ms", "ds2d_speedup", "plain_step_share"):
        assert metrics[name]["n"] == len(PROMPTS), name
    assert metrics["matches_greedy"]["samples"] == [1.0] * len(PROMPTS)
    # Per prompt: DS2D cannot beat greedy by much more than its tokens per step allow (a verify
    # step costs at least a plain forward), nor fall far behind it (plain steps). The two runs
    # are seconds apart on a shared machine: with a CPU hog, one prompt measured 4.3x at 3.3
    # tokens per step, so the bound leaves room for timing noise.
    per_step = dict(zip(metrics["tokens_per_step"]["sample_prompts"], metrics["tokens_per_step"]["samples"]))
    for prompt, speedup in zip(metrics["ds2d_speedup"]["sample_prompts"], metrics["ds2d_speedup"]["samples"]):
        assert 0.2 < speedup <= 2 * per_step[prompt], (prompt, speedup, per_step[prompt])
    assert "itl_ms" not in metrics and metrics["step_ms"]["n"] > 0  # DS2D's tokens arrive per step


def test_ds2d_with_forecast_tokens_reports_where_accepted_drafts_came_from(document: dict) -> None:
    metrics = result(document, decoding="ds2d", drafter="forecast")["metrics"]
    for name in ("forecast_share", "accepted_per_step", "nodes_per_step", "ds2d_speedup"):
        assert metrics[name]["n"] == len(PROMPTS), name
    assert all(0 <= x <= 1 for x in metrics["forecast_share"]["samples"])
    assert metrics["matches_greedy"]["samples"] == [1.0] * len(PROMPTS)  # fp16: bit-identical rows


def test_adapter_variants_report_switch_time_and_bank_bytes(document: dict) -> None:
    runtime = result(document, streams=1, adapters=STYLES, lora_mode="runtime")
    merged = result(document, streams=1, adapters=STYLES, lora_mode="merged")
    assert runtime["metrics"]["adapter_switch_ms"]["n"] == len(PROMPTS) * len(STYLES)
    # merged mode holds a copy of every adapted weight per adapter on top of the bank
    assert merged["metrics"]["adapter_bytes"]["median"] > 10 * runtime["metrics"]["adapter_bytes"]["median"]
    assert {o["adapter"] for o in runtime["outputs"]} == set(STYLES)


def test_runtime_and_merged_adapters_give_the_same_tokens(document: dict) -> None:
    def tokens(r: dict) -> dict:
        return {(o["prompt_id"], o["adapter"]): o["token_ids"] for o in r["outputs"]}
    runtime = result(document, streams=1, adapters=STYLES, lora_mode="runtime")
    merged = result(document, streams=1, adapters=STYLES, lora_mode="merged")
    assert tokens(runtime) == tokens(merged)


def test_multistream_reports_speedup_and_one_output_per_stream(document: dict) -> None:
    streams = result(document, streams=2)
    assert streams["metrics"]["multistream_speedup"]["n"] == len(PROMPTS)
    assert sorted((o["prompt_id"], o["adapter"]) for o in streams["outputs"]) == sorted(
        (p["id"], s) for p in PROMPTS for s in STYLES)


def test_compiled_graph_gives_greedy_tokens_and_its_compile_time_counts_as_load(document: dict, folder: Path) -> None:
    eager = result(document, streams=1, decoding="greedy", adapters=[], graph="eager")
    compiled = result(document, graph="compiled")
    # The engine serves under torch's fail_on_recompile, so an ok result decoded every step with
    # the graph compiled at load. Tokens measured identical in fp32 (fp16 too; int4's bf16
    # fusions part from eager at near-ties).
    assert compiled["status"] == "ok"
    assert [o["token_ids"] for o in compiled["outputs"]] == [o["token_ids"] for o in eager["outputs"]]
    assert compiled["metrics"]["load_ms"]["median"] > eager["metrics"]["load_ms"]["median"]
    assert "fp32 · 1 stream · greedy · compiled step" in (folder / "r.html").read_text()
