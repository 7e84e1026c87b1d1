"""The aihub target against the loopback AI Hub, through the real, unmodified qai-hub client.

The harness runs as a user runs it (a child process), configured the client's normal
way (QAIHUB_CLIENT_INI -> a client.ini whose api_url is the loopback service).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from harness.emulators.aihub.emulator import Emulator
from harness.cli import _cell
from harness.export.exporter import TOLERANCE
from tests.conftest import REPO, write_scenario

TOKEN = f"test-token-{secrets.token_hex(12)}"
S24 = "Samsung Galaxy S24 (Family)"
CHUNK = 16
PROMPTS = [{"id": "capital", "prompt": "The capital of France is", "template": "raw"}]  # one prefill chunk
AIHUB_METRICS = ("prefill_chunk_ms", "decode_step_ms", "ttft_ms_derived", "decode_tokens_per_s_derived",
                 "first_load_ms", "warm_load_ms", "peak_memory_low_bytes", "peak_memory_high_bytes", "cpu_ops",
                 "npu_ops", "top1_agreement_host", "max_abs_logit_diff_host")


@pytest.fixture(scope="module")
def hub():
    service = Emulator(TOKEN).start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """XDG_CACHE_HOME for every run of this module: exports are built once and reused."""
    return tmp_path_factory.mktemp("cache")


def run_harness(folder: Path, hub: Emulator, cache: Path, variants: dict, *, token: str = TOKEN,
                targets: tuple[str, ...] = (f"aihub:{S24}",), timeout_s: float = 600) -> tuple[subprocess.CompletedProcess, dict]:
    ini = hub.client_ini(folder / "client.ini", token)
    scenario = write_scenario(
        folder, PROMPTS, name="aihub", variants=variants,
        baseline={"precision": variants["precision"][0], "adapters": variants["adapters"][0]},
        workload={"prompts": "prompts.jsonl", "max_new_tokens": 2, "repetitions": 1, "warmup": 0,
                  "timeout_s": timeout_s},
        targets=list(targets), adapters_dir=str(REPO / "fixtures" / "adapters"),
        aihub={"target_runtime": "onnx", "prefill_chunk": CHUNK},
    )
    env = {**os.environ, "QAIHUB_CLIENT_INI": str(ini), "XDG_CACHE_HOME": str(cache)}
    process = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", str(scenario), "--db", str(folder / "results.sqlite"),
         "--json", str(folder / "results.json"), "--report", str(folder / "report.html")],
        cwd=REPO, env=env, capture_output=True, text=True,
    )
    document = json.loads((folder / "results.json").read_text()) if (folder / "results.json").is_file() else {}
    return process, document


def by_adapters(document: dict, target: str = S24) -> dict[tuple[str, ...], dict]:
    return {(r["variant"]["precision"], *r["variant"]["adapters"]): r
            for r in document["results"] if r["target"]["name"] == target}


@pytest.fixture(scope="module")
def paper_run(hub: Emulator, cache: Path, tmp_path_factory: pytest.TempPathFactory):
    """FP16 and INT4 variants, two adapters each, on the emulated Galaxy S24."""
    folder = tmp_path_factory.mktemp("aihub-run")
    process, document = run_harness(folder, hub, cache, {"precision": ["fp16", "int4"],
                                                         "adapters": [["formal", "polite"]]})
    return folder, process, document


def test_fp16_and_int4_with_two_adapters_run_on_the_emulated_device(paper_run) -> None:
    _, process, document = paper_run
    assert process.returncode == 0, process.stderr[-3000:]
    results = by_adapters(document)
    assert set(results) == {("fp16", "formal", "polite"), ("int4", "formal", "polite")}
    assert "emulated" in (paper_run[0] / "report.html").read_text()
    for (precision, *_), result in results.items():
        assert result["status"] == "ok"
        assert result["target"] == {"kind": "aihub", "name": S24, "serial": None, "model": S24,
                                    "soc": "qualcomm-snapdragon-8gen3", "emulated": True}
        metrics = result["metrics"]
        assert set(AIHUB_METRICS) <= set(metrics), sorted(metrics)
        assert metrics["decode_step_ms"]["n"] >= 10 and metrics["decode_step_ms"]["median"] > 0
        assert metrics["cpu_ops"]["median"] > 0 and metrics["npu_ops"]["median"] == 0  # onnxruntime on the host CPU
        assert metrics["peak_memory_high_bytes"]["median"] >= metrics["peak_memory_low_bytes"]["median"] > 0
        # accuracy: one sample per adapter, the device's logits against the host engine's
        assert metrics["top1_agreement_host"]["n"] == 2
        assert metrics["top1_agreement_host"]["median"] >= 0.9
        assert metrics["max_abs_logit_diff_host"]["median"] <= TOLERANCE[precision]
        # derived counters: one value per profile (per process), not a copy per prompt
        repetitions = {job["repetition"] for job in result["jobs"]}
        for name in ("ttft_ms_derived", "decode_tokens_per_s_derived"):
            assert metrics[name]["n"] == metrics[name]["processes"] == len(repetitions)
            assert metrics[name]["requests"] == 0
        # the run's summary table shows the derived request counters, marked as derived
        assert f"~{_cell(metrics['decode_tokens_per_s_derived'])}" in process.stderr


def test_each_result_keeps_its_job_ids_and_links(paper_run, hub: Emulator) -> None:
    _, _, document = paper_run
    for result in document["results"]:
        kinds = [(job["kind"], job.get("graph")) for job in result["jobs"]]
        assert sorted(kinds) == sorted([("export", None)] + [(k, g) for k in ("compile", "profile", "inference")
                                                             for g in ("prefill", "decode")])
        for job in result["jobs"]:
            if job["kind"] != "export":
                assert job["url"] == f"{hub.url}/web/jobs/{job['job_id']}/"


def test_the_token_never_reaches_logs_results_or_reports(paper_run) -> None:
    folder, process, _ = paper_run
    written = [process.stdout, process.stderr] + [
        (folder / name).read_bytes().decode("latin-1") for name in ("results.json", "report.html", "results.sqlite")]
    assert all(TOKEN not in text for text in written)


def test_switching_adapters_on_one_compiled_model_changes_the_output_without_a_new_compile(
        hub: Emulator, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx
    from qai_hub.client import Client, ClientConfig, Device

    from harness.engine import load_engine
    from harness.engine.lora import AdapterBank, load_peft
    from harness.export import feeds
    from harness.export.exporter import export_variant

    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    engine = load_engine("smollm2-135m-instruct", "fp16")
    bank = AdapterBank.stack({n: load_peft(REPO / "fixtures" / "adapters" / n, engine.model.config)
                              for n in ("formal", "polite")}, dtype=engine.dtype)
    export = export_variant(engine, "smollm2-135m-instruct", "fp16", bank, CHUNK, CHUNK)  # the runs' export
    inputs = {i.name for i in onnx.load(export.decode, load_external_data=False).graph.input}
    assert {"adapter_index", "lora_a_wq", "lora_b_wq", "lora_a_w2", "lora_b_w2"} <= inputs
    assert all(check["max_abs_logit_diff"] <= TOLERANCE["fp16"] for check in export.check.values())

    client = Client(config=ClientConfig(api_token=TOKEN, api_url=hub.url, web_url=hub.url))
    device = Device(S24)
    compile_job = client.submit_compile_job(client.upload_model(str(export.decode)), device,
                                            options="--target_runtime onnx")
    _wait(compile_job)
    compiled = compile_job.get_target_model()
    _, case = feeds.cases(engine, engine.tokenizer.encode(PROMPTS[0]["prompt"]), bank, "formal",
                          export.prefill_spec, export.decode_spec)
    switched = {**case.inputs, "adapter_index": np.array([bank.slots["polite"]], np.int32)}
    submitted = len(hub.submitted)
    job = client.submit_inference_job(compiled, device, inputs={k: [case.inputs[k], switched[k]] for k in case.inputs})
    _wait(job)
    formal, polite = job.download_output_data()["logits"]
    assert np.abs(formal - polite).max() > 0.1  # another adapter, another output
    assert np.abs(formal[0, 0] - case.reference[0]).max() <= TOLERANCE["fp16"]  # and the device matches the host
    assert [hub.store.jobs[j].kind for j in hub.submitted[submitted:]] == ["inference"]  # no new compile job


def _wait(job, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not job.get_status().finished:
        assert time.monotonic() < deadline, f"job {job.job_id} did not finish"
        time.sleep(0.2)
    assert job.get_status().success, job.get_status().message


# one bank shape: one export serves both
TWO_ORDERS = {"precision": ["fp16"], "adapters": [["formal", "polite"], ["polite", "formal"]]}


def test_failed_jobs_429s_and_an_unknown_device_fail_only_their_results_and_the_run_goes_on(
        hub: Emulator, cache: Path, tmp_path: Path) -> None:
    hub.faults.throttled_submissions, hub.faults.failing_compiles, hub.faults.failing_profiles = 2, 2, 2
    throttled = hub.throttled
    unknown = "Samsung Galaxy S99 (Family)"
    process, document = run_harness(tmp_path, hub, cache, TWO_ORDERS, targets=(f"aihub:{S24}", f"aihub:{unknown}"))
    assert process.returncode == 1 and "Traceback" not in process.stderr
    results = by_adapters(document)
    compile_failed, profile_failed = (results[("fp16", *a)] for a in TWO_ORDERS["adapters"])
    assert compile_failed["status"] == "failed"
    assert "compile job" in compile_failed["error"] and "injected" in compile_failed["error"]
    assert [j["kind"] for j in compile_failed["jobs"]].count("compile") == 2  # the failed jobs' ids are kept
    assert profile_failed["status"] == "failed" and "profiling failed" in profile_failed["error"]
    assert "top1_agreement_host" in profile_failed["metrics"]  # measured before the failure: kept
    assert "decode_step_ms" not in profile_failed["metrics"]
    assert hub.throttled - throttled == 2  # answered 429 twice; the client's own back-off rode them out
    for result in by_adapters(document, unknown).values():
        assert result["status"] == "failed" and f"no device named {unknown!r}" in result["error"]
        assert S24 in result["error"]  # the message lists devices that exist


def test_a_job_that_never_finishes_times_out_with_its_ids_stored(hub: Emulator, cache: Path, tmp_path: Path) -> None:
    hub.faults.hanging_jobs = 1
    process, document = run_harness(tmp_path, hub, cache, {"precision": ["fp16"], "adapters": [["formal", "polite"]]},
                                    timeout_s=30)
    assert process.returncode == 1 and "Traceback" not in process.stderr
    [result] = document["results"]
    assert result["status"] == "failed" and "not finished after 30 s" in result["error"]
    assert [j["kind"] for j in result["jobs"]].count("compile") == 2
    # names the jobs that did not finish, with their links, all of them jobs the result recorded: the
    # hanging one, and on a loaded machine the other compile too, if it was not done within 30 s
    named = re.findall(r"(\S+) \((http[^)]+)\)", result["error"].split("(workload.timeout_s): ")[1])
    recorded = [(j.get("job_id"), j.get("url")) for j in result["jobs"]]
    assert 1 <= len(named) <= 2 and all(job in recorded for job in named), (named, recorded)


def test_a_rejected_token_fails_every_result_with_a_clear_message(hub: Emulator, cache: Path, tmp_path: Path) -> None:
    wrong = f"wrong-{secrets.token_hex(8)}"
    process, document = run_harness(tmp_path, hub, cache, {"precision": ["fp16"], "adapters": [["formal", "polite"]]},
                                    token=wrong)
    assert process.returncode == 1 and "Traceback" not in process.stderr
    [result] = document["results"]
    assert result["status"] == "failed" and "401" in result["error"] and "api_token" in result["error"]
    assert wrong not in process.stderr + process.stdout + (tmp_path / "results.json").read_text()


@pytest.mark.parametrize("fields, message", [
    ({"aihub": {"target_runtime": "qnn"}}, "aihub.target_runtime"),
    ({"aihub": {"prefill_chunk": 0}}, "aihub.prefill_chunk"),
    ({"targets": ["aihub"]}, "needs a device name"),
])
def test_bad_aihub_settings_are_one_line_errors(tmp_path: Path, fields: dict, message: str) -> None:
    from tests.conftest import harness

    process = harness("run", str(write_scenario(tmp_path, **fields)))
    assert process.returncode == 2 and message in process.stderr
    assert len(process.stderr.strip().splitlines()) == 1


def test_the_emulator_command_serves_the_wire_to_the_client_through_its_profile(tmp_path: Path) -> None:
    from qai_hub.api_utils import load_api_config_from_file
    from qai_hub.client import Client

    env = {**os.environ, "HOME": str(tmp_path)}
    server = subprocess.Popen([sys.executable, "-m", "harness.cli", "aihub-emulator", "serve", "--port", "0"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert "loopback AI Hub at http://127.0.0.1:" in server.stdout.readline()
        assert "profile 'emulator'" in server.stdout.readline()
        client = Client(config=load_api_config_from_file(str(tmp_path / ".qai_hub" / "emulator.ini")))
        devices = client.get_devices()
        assert S24 in [d.name for d in devices]
        assert all("emulated:onnxruntime-host" in d.attributes for d in devices)
    finally:
        server.terminate()
        server.wait()
