"""Native runtimes as a runtime of a variant: llama.cpp's real tools (the host build) beside the
reference engine, on the local target and two emulated phones through the real adb path; and
what Genie and ExecuTorch, which cannot run here, are given on an emulated phone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO, harness
from harness.emulators.adb.control import inject
from harness.run import native
from harness.run.protocol import Counters, Job, Request
from harness.spec.scenario import load_scenario
from harness.spec.variant import Variant
from harness.targets.base import TargetError
from harness.targets.registry import open_targets

pytestmark = pytest.mark.usefixtures("no_real_adb_server")

SCENARIO = REPO / "scenarios" / "runtimes.yaml"


@pytest.fixture(scope="module")
def run_folder(server, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("runtimes")
    run = harness("run", str(SCENARIO), "--target", "local", "--target", "adb", "--db", str(folder / "r.sqlite"),
                  "--json", str(folder / "r.json"), "--report", str(folder / "r.html"))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return folder


@pytest.fixture(scope="module")
def document(run_folder) -> dict:
    return json.loads((run_folder / "r.json").read_text())


def _native(document: dict) -> list[dict]:
    return [r for r in document["results"] if r["variant"]["runtime"] == "llamacpp"]


def test_every_variant_runs_on_every_target_labelled(document) -> None:
    results = document["results"]
    assert {(r["variant"]["runtime"], r["target"]["kind"]) for r in results} == {
        (runtime, kind) for runtime in ("reference", "llamacpp") for kind in ("local", "adb")}
    assert len(results) == 8 * 3 and all(r["status"] == "ok" for r in results)
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


def test_the_report_names_each_results_runtime_binary_and_model_file(run_folder) -> None:
    html = (run_folder / "r.html").read_text()
    assert html.count("llamacpp: llama-completion 0.5.0-dev (build 1, commit 0c1e570) · "
                      "SmolLM2-135M-Instruct.F16.gguf") == 6  # fp16, fp16 with adapters: on local and both phones
    assert html.count("llamacpp: llama-batched 0.5.0-dev (build 1, commit 0c1e570) · "
                      "SmolLM2-135M-Instruct.Q4_1.gguf") == 3


def test_native_counters_are_the_tools_own_and_none_is_guessed(document) -> None:
    for result in _native(document):
        metrics = result["metrics"]
        rate = "batch_decode_tokens_per_s" if result["variant"]["streams"] > 1 else "decode_tokens_per_s"
        assert metrics[rate]["median"] > 0 and metrics["load_ms"]["median"] > 0
        assert not {"ttft_ms", "e2e_ms", "itl_ms", "peak_rss_bytes", "pss_bytes"} & set(metrics)  # not printed
        per_prompt = len(result["variant"]["adapters"]) or 1  # one tool process per prompt and adapter
        assert metrics[rate]["n"] == 2 * per_prompt  # the warm-up request is stored apart
    for fp16 in (r for r in _native(document) if r["variant"]["precision"] == "fp16"):
        # the F16 file's 271 MB are paged in: the tool's own peak, not the harness's nor time's 8 MB
        assert 270_000_000 < fp16["metrics"]["tool_peak_rss_bytes"]["median"] < 1_000_000_000


def test_agreement_with_the_reference_engine_is_reported(document) -> None:
    base_model = [r for r in _native(document) if not r["variant"]["adapters"]]
    for result in base_model:
        assert 0 <= result["metrics"]["agreement_with_baseline"]["median"] <= 1
    same_weights = [r for r in base_model if r["variant"]["precision"] == "fp16"]
    # F16 weights are the reference fp16's values: llama.cpp's greedy text matches ours
    assert all(r["metrics"]["agreement_with_baseline"]["median"] >= 0.9 for r in same_weights)


def test_lora_adapters_on_llamacpp_say_what_ours_say(document) -> None:
    """The PEFT adapters converted by llama.cpp's own converter, applied with --lora on the F16
    weights: per target, prompt and adapter, the same text as the reference engine's."""
    outputs = {}
    for result in document["results"]:
        if result["variant"]["adapters"]:
            for output in result["outputs"]:
                key = (result["target"]["name"], output["prompt_id"], output["adapter"])
                outputs.setdefault(key, {})[result["variant"]["runtime"]] = output["text"]
    assert {adapter for _, _, adapter in outputs} == {"formal", "polite"} and len(outputs) == 3 * 2 * 2
    # every target runs the same host build, so a tipped greedy choice repeats on each: count it once
    differing = {(prompt, adapter) for (_, prompt, adapter), texts in outputs.items()
                 if texts["llamacpp"] != texts["reference"]}
    assert len(differing) <= 1, outputs  # fp16 rounding may tip one greedy choice (seen with AVX-512 kernels)
    for prompt, adapter in differing:
        assert len({texts["llamacpp"] for (_, p, a), texts in outputs.items() if (p, a) == (prompt, adapter)}) == 1
    lora = next(r for r in _native(document) if r["variant"]["adapters"])
    assert "agreement_with_baseline" not in lora["metrics"]  # adapter outputs differ from the base model's on purpose
    assert lora["metrics"]["style_score"]["n"] == 2 * 2  # scored with each adapter's style markers


# -- a tool that fails --------------------------------------------------------------------------

def test_a_garbled_tool_run_fails_with_its_stderr_and_keeps_the_requests_before(tmp_path) -> None:
    job = Job(model="smollm2-135m-instruct", variant=Variant(runtime="llamacpp").as_dict(),
              prompts=[{"id": "a", "prompt": "One", "template": "raw"}, {"id": "b", "prompt": "Two", "template": "raw"}],
              max_new_tokens=4, warmup=0)
    plan = native.plan(job, native.Place(host_build=True, root="."))
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
              prompts=[{"id": "a", "prompt": "One", "template": "raw"}], max_new_tokens=4, warmup=0,
              runtime_settings={"device_bin": str(tmp_path)})
    with pytest.raises(native.ToolFailed, match=f"no llama-batched in {tmp_path}"):
        native.plan(job, native.Place(host_build=False, root="."))


def test_the_tool_command_quotes_nothing_itself_and_sizes_the_cache() -> None:
    """argv stays a list up to the target (the adb target shlex-quotes each value)."""
    argv = native.plan(Job(model="smollm2-135m-instruct", variant=Variant(runtime="llamacpp").as_dict(),
                           prompts=[{"id": "a", "prompt": "it's $(rm -rf /)", "template": "raw"}],
                           max_new_tokens=8, warmup=0), native.Place(host_build=True, root=".")).invocations[0].argv
    assert argv[:2] == ["llamacpp/bin/llama-completion", "-m"] and "it's $(rm -rf /)" in argv
    assert argv[argv.index("-c") + 1] == str(len(native._tokenizer("smollm2-135m-instruct").encode("it's $(rm -rf /)")) + 8)


def test_devices_lists_the_runtimes_deployed_with_versions(document, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one table row per device, no cell wrapped
    out = harness("devices")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("llamacpp: 0.5.0-dev (build 1, commit 0c1e570)") == 2  # both emulated phones
    assert out.stdout.count("reference: harness") == 2


# -- Genie and ExecuTorch: their binaries cannot run here; what reaches the phone is checked -----

PLACEHOLDER = b"a placeholder for a file of the user's SDK or model: not an arm64 binary\n"
GENIE_CONFIG = REPO / "tests/data/runtimes/genie_config_llama_v3_2_1b_aihubapps.json"


def _placeholders(root, *paths: str) -> None:
    for relative in paths:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(PLACEHOLDER)


@pytest.fixture(scope="module")
def device_runtimes(server, tmp_path_factory) -> tuple[dict, object, object]:
    """A scenario of Genie and ExecuTorch variants on the emulated S25 (SM8750), with an SDK and
    model folders laid out as the user's would be (placeholder files, a real AI Hub config)."""
    folder = tmp_path_factory.mktemp("device-runtimes")
    _placeholders(folder / "qairt", "bin/aarch64-android/genie-t2t-run", "lib/aarch64-android/libGenie.so",
                  "lib/aarch64-android/libQnnHtp.so", "lib/hexagon-v75/unsigned/libQnnHtpV75Skel.so",
                  "lib/hexagon-v79/unsigned/libQnnHtpV79Skel.so")
    _placeholders(folder / "genie-int4", "tokenizer.json", "htp_backend_ext_config.json",
                  *(f"llama_v3_2_1b_instruct_part_{i}_of_3.bin" for i in (1, 2, 3)))
    (folder / "genie-int4/genie_config.json").write_text(GENIE_CONFIG.read_text())
    _placeholders(folder / "et", "llama_main", "smollm2.pte", "tokenizer.json")
    (folder / "prompts.jsonl").write_text('{"id": "capital", "prompt": "What is the capital of France?"}\n')
    (folder / "scenario.yaml").write_text(yaml.safe_dump({
        "name": "device-runtimes", "targets": ["adb:emu-galaxy-s25"],
        "variants": {"runtime": ["genie"], "precision": ["int4"],
                     "include": [{"runtime": "genie", "precision": "int4", "streams": 3},
                                 {"runtime": "executorch", "precision": "int4"}]},
        "baseline": {"runtime": "genie", "streams": 1},
        "workload": {"prompts": "prompts.jsonl", "max_new_tokens": 8, "repetitions": 1, "warmup": 0},
        "genie": {"sdk": "qairt", "models": {"int4": "genie-int4"}},
        "executorch": {"llama_main": "et/llama_main",
                       "models": {"int4": {"pte": "et/smollm2.pte", "tokenizer": "et/tokenizer.json"}}}}))
    run = harness("run", str(folder / "scenario.yaml"), "--db", str(folder / "r.sqlite"), "--json",
                  str(folder / "r.json"), "--report", str(folder / "r.html"))
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-2000:]  # ran, and every result failed
    phone = server.devices["emu-galaxy-s25"].root / "data/local/tmp/hil-harness"
    return json.loads((folder / "r.json").read_text()), phone, folder


def test_genie_and_executorch_fail_as_the_binary_does_with_its_stderr(device_runtimes) -> None:
    document, _, _ = device_runtimes
    errors = {r["variant"]["runtime"] + str(r["variant"]["streams"]): r["error"] for r in document["results"]}
    assert all(r["status"] == "failed" for r in document["results"])
    # the placeholder is not an executable: the shell's complaint about it is the stored error
    for runtime, binary in (("genie1", "genie-t2t-run"), ("genie3", "genie-t2t-run"), ("executorch1", "llama_main")):
        assert f"{binary} exited with code" in errors[runtime] and f"/{binary}: " in errors[runtime]


def test_the_sdk_the_models_and_a_dialog_config_per_variant_are_pushed(device_runtimes) -> None:
    _, phone, _ = device_runtimes
    assert (phone / "genie/bin/genie-t2t-run").read_bytes() == PLACEHOLDER
    assert {p.name for p in (phone / "genie/lib").iterdir()} == {"libGenie.so", "libQnnHtp.so"}
    assert [p.name for p in (phone / "genie/v79").iterdir()] == ["libQnnHtpV79Skel.so"]  # SM8750's HTP only
    assert not (phone / "genie/v75").exists()
    assert len(list((phone / "genie/models/int4").glob("*.bin"))) == 3
    basic = json.loads((phone / "genie/int4-s1-greedy-genie.json").read_text())["dialog"]
    multistream = json.loads((phone / "genie/int4-s3-greedy-genie.json").read_text())["dialog"]
    assert basic["type"] == "basic" and multistream["multistream"]["n-streams"] == 3
    assert basic["tokenizer"]["path"] == "/data/local/tmp/hil-harness/genie/models/int4/tokenizer.json"
    assert {p.name for p in (phone / "executorch").iterdir()} == {"llama_main", "smollm2.pte", "tokenizer.json"}


def test_genie_and_executorch_command_lines(device_runtimes) -> None:
    _, _, folder = device_runtimes
    scenario = load_scenario(folder / "scenario.yaml")
    for variant in scenario.variants:
        job = Job(model=scenario.spec.model, variant=variant.as_dict(), prompts=[p.model_dump() for p in scenario.prompts],
                  max_new_tokens=8, warmup=0, runtime_settings=scenario.runtime_settings(variant.runtime))
        plan = native.plan(job, native.Place(host_build=False, root="/data/local/tmp/hil-harness", soc="SM8750"))
        (invocation,) = plan.invocations
        prompt = invocation.prompt
        assert "What is the capital of France?" in prompt and "<|im_start|>" in prompt  # the chat template
        if variant.runtime == "genie":
            assert invocation.argv == ["genie/bin/genie-t2t-run", "-c", f"genie/{variant.key}.json", "-p", prompt]
            assert plan.env == {"LD_LIBRARY_PATH": "/data/local/tmp/hil-harness/genie/lib",
                                "ADSP_LIBRARY_PATH": "/data/local/tmp/hil-harness/genie/v79"}
        else:
            assert invocation.argv == ["executorch/llama_main", "--model_path=executorch/smollm2.pte",
                                       "--tokenizer_path=executorch/tokenizer.json", f"--prompt={prompt}",
                                       "--max_new_tokens=8", "--temperature=0"]


def test_llamacpp_on_a_real_phone_needs_its_device_build() -> None:
    job = Job(model="smollm2-135m-instruct", variant=Variant(runtime="llamacpp").as_dict(),
              prompts=[{"id": "a", "prompt": "One", "template": "raw"}], max_new_tokens=4, warmup=0)
    with pytest.raises(native.ToolFailed, match="needs the scenario's llamacpp.device_bin"):
        native.plan(job, native.Place(host_build=False, root="/data/local/tmp/hil-harness", soc="SM8650"))


@pytest.mark.parametrize("fault, error", [
    ("hang:exec time -v", r"^runtime 'llamacpp' timed out after 20 s \(killed on the device\)$"),
    ("oom:64M", r"^llama-completion exited with code 137; its last stderr lines:"),
], ids=["hangs", "killed-for-memory"])
def test_a_native_tool_that_hangs_or_is_killed_for_memory_is_a_clear_error(server, fault: str, error: str) -> None:
    (phone,) = open_targets("adb:emu-galaxy-s25")
    job = Job(model="smollm2-135m-instruct", variant=Variant(runtime="llamacpp").as_dict(),
              prompts=[{"id": "a", "prompt": "What is the capital of France?", "template": "raw"}],
              max_new_tokens=4, warmup=0)
    inject(server.port, "emu-galaxy-s25", fault)
    try:
        with pytest.raises(TargetError, match=error):
            list(phone.run(job, timeout_s=20))
    finally:
        inject(server.port, "emu-galaxy-s25", "clear")
