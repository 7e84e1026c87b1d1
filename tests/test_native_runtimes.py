"""llama.cpp's real tools (the host build) as a runtime of a variant, beside the reference engine:
on the local target and on two emulated phones through the real adb path."""

from __future__ import annotations

import json
import pytest

from conftest import REPO, harness
from harness.run import native
from harness.run.protocol import Counters, Job, Request
from harness.spec.variant import Variant

pytestmark = pytest.mark.usefixtures("no_real_adb_server")

SCENARIO = REPO / "scenarios" / "runtimes.yaml"


@pytest.fixture(scope="module")
def document(server, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("runtimes")
    run = harness("run", str(SCENARIO), "--target", "local", "--target", "adb", "--db", str(folder / "r.sqlite"),
                  "--json", str(folder / "r.json"), "--report", str(folder / "r.html"))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return json.loads((folder / "r.json").read_text())


def _native(document: dict) -> list[dict]:
    return [r for r in document["results"] if r["variant"]["runtime"] == "llamacpp"]


def test_every_variant_runs_on_every_target_labelled(document) -> None:
    results = document["results"]
    assert {(r["variant"]["runtime"], r["target"]["kind"]) for r in results} == {
        (runtime, kind) for runtime in ("reference", "llamacpp") for kind in ("local", "adb")}
    assert len(results) == 6 * 3 and all(r["status"] == "ok" for r in results)
    assert all(r["target"]["emulated"] == (r["target"]["kind"] == "adb") for r in results)


def test_each_native_result_names_its_binary_model_file_and_counter_sources(document) -> None:
    for result in _native(document):
        (record, *_) = result["jobs"]
        variant = result["variant"]
        tool = {1: {"greedy": "llama-completion", "lookup": "llama-lookup"}}.get(variant["streams"], {}).get(
            variant["decoding"], "llama-batched")
        assert record["tool"] == tool and "commit 0c1e570" in record["version"]
        assert record["model_file"] == {"fp16": "SmolLM2-135M-Instruct.F16.gguf",
                                        "int4": "SmolLM2-135M-Instruct.Q4_1.gguf"}[variant["precision"]]
        assert set(record["counter_sources"]) >= {"load_ms", "tool_peak_rss_bytes"}


def test_native_counters_are_the_tools_own_and_none_is_guessed(document) -> None:
    for result in _native(document):
        metrics = result["metrics"]
        rate = "batch_decode_tokens_per_s" if result["variant"]["streams"] > 1 else "decode_tokens_per_s"
        assert metrics[rate]["median"] > 0 and metrics["load_ms"]["median"] > 0
        assert not {"ttft_ms", "e2e_ms", "itl_ms", "peak_rss_bytes", "pss_bytes"} & set(metrics)  # not printed
        assert metrics[rate]["n"] == 2  # the warm-up request is stored apart
    for fp16 in (r for r in _native(document) if r["variant"]["precision"] == "fp16"):
        # the F16 file's 271 MB are paged in: the tool's own peak, not the harness's nor time's 8 MB
        assert 270_000_000 < fp16["metrics"]["tool_peak_rss_bytes"]["median"] < 1_000_000_000


def test_agreement_with_the_reference_engine_is_reported(document) -> None:
    for result in _native(document):
        assert 0 <= result["metrics"]["agreement_with_baseline"]["median"] <= 1
    same_weights = [r for r in _native(document) if r["variant"]["precision"] == "fp16"]
    # F16 weights are the reference fp16's values: llama.cpp's greedy text matches ours
    assert all(r["metrics"]["agreement_with_baseline"]["median"] >= 0.9 for r in same_weights)


# -- a tool that fails --------------------------------------------------------------------------

def test_a_garbled_tool_run_fails_with_its_stderr_and_keeps_the_requests_before(tmp_path) -> None:
    job = Job(model="smollm2-135m-instruct", variant=Variant(runtime="llamacpp").as_dict(),
              prompts=[{"id": "a", "prompt": "One", "template": "raw"}, {"id": "b", "prompt": "Two", "template": "raw"}],
              max_new_tokens=4, warmup=0)
    plan = native.plan(job)
    good = (REPO / "tests/data/runtimes/llamacpp_completion_host_0c1e570_stderr.txt").read_text()
    outcomes = iter([native.Outcome(0, "", "version: 1 (commit x)", None), native.Outcome(0, " Paris", good, 1 << 20),
                     native.Outcome(0, "half a li", "llama_model_load: loading\nSegmentation fault", None)])
    events = native.events(job, plan, lambda argv, env, left: next(outcomes), deadline=float("inf"))
    seen = []
    with pytest.raises(native.ToolFailed, match=r"(?s)llama-completion: no timing lines.*Segmentation fault"):
        for event in events:
            seen.append(event)
    assert [type(e) for e in seen[1:]] == [Request, Counters] and seen[1].text == " Paris"


def test_a_missing_binary_is_named_before_anything_runs(tmp_path) -> None:
    job = Job(model="smollm2-135m-instruct", variant=Variant(runtime="llamacpp", streams=3, prefill="shared").as_dict(),
              prompts=[{"id": "a", "prompt": "One", "template": "raw"}], max_new_tokens=4, warmup=0)
    with pytest.raises(native.ToolFailed, match=f"no llama-batched in {tmp_path}"):
        native.plan(job, tmp_path)


def test_the_tool_command_quotes_nothing_itself_and_sizes_the_cache() -> None:
    """argv stays a list up to the target (the adb target shlex-quotes each value)."""
    argv = native.plan(Job(model="smollm2-135m-instruct", variant=Variant(runtime="llamacpp").as_dict(),
                           prompts=[{"id": "a", "prompt": "it's $(rm -rf /)", "template": "raw"}],
                           max_new_tokens=8, warmup=0)).invocations[0].argv
    assert argv[:2] == ["llamacpp/bin/llama-completion", "-m"] and "it's $(rm -rf /)" in argv
    assert argv[argv.index("-c") + 1] == str(len(native._tokenizer("smollm2-135m-instruct").encode("it's $(rm -rf /)")) + 8)


def test_devices_lists_the_runtimes_deployed_with_versions(document) -> None:
    out = harness("devices")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("llamacpp: 0.5.0-dev (build 1, commit 0c1e570)") == 2  # both emulated phones
    assert out.stdout.count("reference: harness") == 2
