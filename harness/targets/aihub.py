"""The aihub target: a variant profiled on a Qualcomm AI Hub cloud device with the qai-hub client.

    --target aihub:"Samsung Galaxy S24 (Family)"

For each variant it exports the prefill and decode graphs (harness/export), uploads and
compiles both (target runtime from the scenario's `aihub.target_runtime`), then submits
together a profile job and an inference job per graph. The inference jobs carry real
inputs: each prompt's last prefill chunk and first decode step, through each adapter,
with the host engine's KV cache; their outputs are compared with the host engine's
logits. Adapters are graph inputs, so every adapter runs on the same compiled model.
Compiled models are reused across repetitions; profile and inference jobs are not.

Counters come from AI Hub's profile (times in us, memory in bytes); TTFT and decode rate
are derived from the profiled chunk and step times, and named `*_derived`. Credentials
are the client's own configuration: `aihub.profile` in the scenario (~/.qai_hub/<profile>.ini),
else QAIHUB_CLIENT_INI, else ~/.qai_hub/client.ini; the harness never reads the token.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, PositiveInt

from harness.run import protocol
from harness.run.protocol import Job
from harness.targets.base import TargetError, TargetInfo

EMULATED_ATTRIBUTE = "emulated:onnxruntime-host"  # what the loopback AI Hub's devices carry
GRAPHS = ("prefill", "decode")


class AiHubSettings(BaseModel):
    """How the aihub target uses Qualcomm AI Hub: the scenario's `aihub:` block."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: str | None = None  # qai-hub client profile (~/.qai_hub/<profile>.ini); default: its client.ini
    target_runtime: Literal["qnn_context_binary", "onnx", "precompiled_qnn_onnx", "qnn_dlc", "tflite"] = \
        "qnn_context_binary"
    prefill_chunk: PositiveInt = 128  # prompt tokens per prefill graph call (Qualcomm's AR-128)


SUPPORTED = {"streams": 1, "decoding": "greedy", "lora_mode": "runtime", "graph": "eager"}


def unsupported(variant: dict) -> str | None:
    """Why AI Hub cannot run the variant, or None: it compiles the eager engine's exported
    graphs itself (checked when a scenario loads, and again here)."""
    wrong = {k: variant[k] for k, v in SUPPORTED.items() if variant[k] != v}
    if not wrong:
        return None
    return ("the aihub target runs one-stream greedy variants with runtime LoRA, exported from the eager engine "
            f"({', '.join(f'{k} {v}' for k, v in SUPPORTED.items())}); this variant has "
            f"{', '.join(f'{k} {v}' for k, v in wrong.items())}")


class AiHubTarget:
    def __init__(self, device: str, settings: AiHubSettings) -> None:
        self.device_name, self.settings = device, settings
        self.problem: str | None = None  # why nothing can run here; each variant's result stores it
        self._compiled: dict[tuple[str, str], object] = {}  # (export digest, graph) -> compiled model
        attributes: list[str] = []
        try:
            self.client = _client(settings.profile)
            found = self.client.get_devices(name=device)
            if not found:
                names = sorted({d.name for d in self.client.get_devices()})
                self.problem = f"AI Hub has no device named {device!r}; e.g. {', '.join(names[:8])}"
            else:
                attributes = list(found[0].attributes)
        except Exception as exc:  # bad credentials, unreachable service: stored per variant, run goes on
            self.problem = describe(exc)
        chipset = next((a.split(":", 1)[1] for a in attributes if a.startswith("chipset:")), None)
        self.info = TargetInfo(kind="aihub", name=device, serial=None, model=device, soc=chipset,
                               emulated=EMULATED_ATTRIBUTE in attributes)

    def run(self, job: Job, timeout_s: float) -> Iterator[protocol.Event]:
        if self.problem:
            raise TargetError(self.problem)
        if why := unsupported(job.variant):
            raise TargetError(why)
        deadline = time.monotonic() + timeout_s
        session = _Session(self, job, deadline)
        try:
            yield from session.run()
        except TargetError:
            raise
        except Exception as exc:  # the client's errors (401, 429, 5xx) and ours end this variant, not the run
            raise TargetError(describe(exc)) from None


class _Session:
    """One repetition of one variant: export, compile (once), profile and infer."""

    def __init__(self, target: AiHubTarget, job: Job, deadline: float) -> None:
        self.target, self.job, self.deadline = target, job, deadline
        self.client = target.client
        self.timeout_s = deadline - time.monotonic()

    def run(self) -> Iterator[protocol.Event]:
        from qai_hub.client import Device

        from harness.export import feeds
        from harness.export.exporter import ExportError, export_variant

        engine, bank, prompts = self._host()
        chunk = self.target.settings.prefill_chunk
        longest = max(len(ids) for ids in prompts.values())
        context = -(-(longest + self.job.max_new_tokens) // chunk) * chunk
        try:
            export = export_variant(engine, self.job.model, self.job.variant["precision"], bank, chunk, context)
        except ExportError as exc:
            raise TargetError(str(exc)) from None
        yield protocol.RemoteJob({"kind": "export", "digest": export.digest, "check": export.check})
        device = Device(self.target.device_name)
        compiled = yield from self._compile(export, device)
        adapters = self.job.variant["adapters"] or [None]
        cases = {(pid, a): feeds.cases(engine, ids, bank, a, export.prefill_spec, export.decode_spec)
                 for pid, ids in prompts.items() for a in adapters}
        datasets = {g: _dataset([c[i] for c in cases.values()]) for i, g in enumerate(GRAPHS)}
        profile_jobs = {g: self.client.submit_inference_job(compiled[g], device, profile=True, retry=False,
                                                            name=f"{export.digest}-{g}-profile") for g in GRAPHS}
        infer_jobs = {g: self.client.submit_inference_job(compiled[g], device, inputs=datasets[g], retry=False,
                                                          profile=False, name=f"{export.digest}-{g}-inference")
                      for g in GRAPHS}
        for g in GRAPHS:
            yield _job_event("profile", g, profile_jobs[g])
            yield _job_event("inference", g, infer_jobs[g])
        # inference first: its accuracy is stored even if profiling then fails
        failures = self._finish(list(infer_jobs.values()))
        if not any(j in failures for j in infer_jobs.values()):
            yield from self._accuracy(infer_jobs, cases)
        failures += self._finish(list(profile_jobs.values()))
        if not any(j in failures for j in profile_jobs.values()):
            yield from self._profile_counters(profile_jobs, prompts, chunk)
        if failures:
            raise TargetError("; ".join(_failure(j) for j in failures))

    def _host(self):
        """The host reference engine, the variant's adapter bank and the prompts' token ids."""
        from harness.engine import load_engine
        from harness.engine.lora import AdapterBank, load_peft

        engine = load_engine(self.job.model, self.job.variant["precision"])
        names = self.job.variant["adapters"]
        folder = Path(self.job.adapters_dir or ".")
        bank = AdapterBank.stack({n: load_peft(folder / n, engine.model.config) for n in names}, dtype=engine.dtype)
        prompts = {p["id"]: engine.tokenizer.encode(engine.tokenizer.prompt_text(p)) for p in self.job.prompts}
        return engine, bank, prompts

    def _compile(self, export, device) -> Iterator[protocol.Event]:
        """Compiled models of both graphs; both compile jobs are submitted before either is awaited."""
        options = f"--target_runtime {self.target.settings.target_runtime}"
        compiled = {g: self.target._compiled.get((export.digest + options, g)) for g in GRAPHS}
        jobs = {}
        for g in GRAPHS:
            if compiled[g] is None:
                model = self.client.upload_model(str(getattr(export, g)), name=f"{export.digest}-{g}.onnx")
                jobs[g] = self.client.submit_compile_job(model, device, options=options, retry=False,
                                                         name=f"{export.digest}-{g}")
                yield _job_event("compile", g, jobs[g])
        failures = self._finish(list(jobs.values()))
        if failures:
            raise TargetError("; ".join(_failure(j) for j in failures))
        for g, job in jobs.items():
            compiled[g] = self.target._compiled[(export.digest + options, g)] = job.get_target_model()
        return compiled

    def _finish(self, jobs: list) -> list:
        """Wait for every job until the deadline; returns the failed ones.

        Polls every tenth of the time waited so far (0.1 s to 10 s): a job is seen done at most
        about 10 % after it finished, where doubling back-off can wait as long again (on the
        loopback hub, whose jobs take seconds, that was 40 % of a run).
        """
        pending, failed, start = list(jobs), [], time.monotonic()
        while pending:
            for job in list(pending):
                status = job.get_status()
                if status.finished:
                    pending.remove(job)
                    if status.failure:
                        failed.append(job)
            if pending:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    ids = ", ".join(f"{j.job_id} ({j.url})" for j in pending)
                    raise TargetError(f"AI Hub jobs not finished after {self.timeout_s:.0f} s "
                                      f"(workload.timeout_s): {ids}")
                time.sleep(min(max(0.1, (time.monotonic() - start) / 10), 10.0, left))
        return failed

    def _accuracy(self, jobs: dict, cases: dict) -> Iterator[protocol.Event]:
        from harness.export import feeds

        outputs = {g: jobs[g].download_output_data()["logits"] for g in GRAPHS}
        for index, ((prompt_id, adapter), pair) in enumerate(cases.items()):
            agreements, diffs = [], []
            for g, case in zip(GRAPHS, pair):
                agreement, diff = feeds.compare(outputs[g][index], case)
                agreements.append(agreement * case.rows)
                diffs.append(diff)
            rows = sum(case.rows for case in pair)
            yield protocol.Counters(prompt_id, {"top1_agreement_host": sum(agreements) / rows,
                                                "max_abs_logit_diff_host": max(diffs)}, adapter)

    def _profile_counters(self, jobs: dict, prompts: dict[str, list[int]], chunk: int) -> Iterator[protocol.Event]:
        profiles = {g: jobs[g].download_profile() for g in GRAPHS}
        summary = {g: profiles[g]["execution_summary"] for g in GRAPHS}
        times_ms = {g: [t / 1e3 for t in summary[g].get("all_inference_times") or [summary[g]["estimated_inference_time"]]]
                    for g in GRAPHS}
        units = [layer["compute_unit"] for g in GRAPHS for layer in profiles[g]["execution_detail"]]
        peaks = [summary[g].get("inference_memory_peak_range") for g in GRAPHS]
        counters = {
            "prefill_chunk_ms": times_ms["prefill"],
            "decode_step_ms": times_ms["decode"],
            "first_load_ms": sum(summary[g]["first_load_time"] for g in GRAPHS) / 1e3,
            "warm_load_ms": sum(summary[g]["warm_load_time"] for g in GRAPHS) / 1e3,
            "npu_ops": units.count("NPU"), "gpu_ops": units.count("GPU"), "cpu_ops": units.count("CPU"),
        }
        if all(isinstance(p, (tuple, list)) for p in peaks):  # the larger graph bounds the deployment
            counters["peak_memory_low_bytes"] = max(p[0] for p in peaks)
            counters["peak_memory_high_bytes"] = max(p[1] for p in peaks)
        yield protocol.Counters(None, counters)
        # Derived once per result: one profile gives one value, not one sample per prompt.
        chunk_ms, step_ms = statistics.median(times_ms["prefill"]), statistics.median(times_ms["decode"])
        chunks = statistics.median_low([-(-len(ids) // chunk) for ids in prompts.values()])
        yield protocol.Counters(None, {"ttft_ms_derived": chunks * chunk_ms, "decode_tokens_per_s_derived": 1e3 / step_ms})


def _dataset(cases: list) -> dict[str, list]:
    """Cases as qai-hub dataset entries: input name -> one array per case, in the graph's input order."""
    return {name: [case.inputs[name] for case in cases] for name in cases[0].inputs}


def _job_event(kind: str, graph: str, job) -> protocol.RemoteJob:
    return protocol.RemoteJob({"kind": kind, "graph": graph, "job_id": job.job_id, "url": job.url})


def _failure(job) -> str:
    return f"AI Hub {job.job_type} job {job.job_id} failed: {job.get_status().message or 'no reason given'} ({job.url})"


def _client(profile: str | None):
    from qai_hub.client import Client

    return Client(profile=profile) if profile else Client()


def describe(exc: Exception) -> str:
    """One line for the client's errors; never the configuration's contents (the token)."""
    from qai_hub.client import Error, RateLimitedError

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, RateLimitedError):
        return f"AI Hub rate limit (429): {text}"
    if "authenticate" in text:
        return f"AI Hub rejected the API token (401): {text} Check api_token in the qai-hub client configuration."
    if isinstance(exc, Error):
        return f"AI Hub: {text}"
    return f"aihub target: {type(exc).__name__}: {text}"
