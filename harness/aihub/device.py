"""An emulated device: one ONNX model run with onnxruntime on this host, in its own process.

    python -m harness.aihub.device profile MODEL.onnx RESULT.json
    python -m harness.aihub.device infer MODEL.onnx RESULT.json INPUTS.h5 OUTPUTS.h5

The loopback AI Hub starts one per profile or inference job, so a job's peak memory is
that process's own (VmHWM) and a crash cannot take the service down. Everything written
is measured here: load times, per-run inference times, memory and per-node times from
onnxruntime's profiler. Every node runs on the host CPU, so each is reported as "CPU".
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import h5py
import numpy as np

PROFILE_RUNS = 10  # timed inferences per profile job
ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int32)": np.int32,
             "tensor(int64)": np.int64}


def memory_kb(field: str) -> int:
    """VmHWM (peak) or VmRSS (current) of this process, in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _session(model: Path, profile_prefix: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def random_inputs(session) -> dict[str, np.ndarray]:
    """What AI Hub feeds a profile job without inputs: random floats; integer inputs get zeros
    (valid token ids, positions and adapter slots)."""
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in session.get_inputs():
        dtype = ORT_TYPES[spec.type]
        if np.issubdtype(dtype, np.floating):
            feeds[spec.name] = (rng.standard_normal(spec.shape) * 0.02).astype(dtype)
        else:
            feeds[spec.name] = np.zeros(spec.shape, dtype)
    return feeds


def profile(model: Path, result: Path) -> None:
    before_load = memory_kb("VmRSS")
    start = time.perf_counter()
    session = _session(model)
    cold_us = (time.perf_counter() - start) * 1e6
    after_cold_peak = memory_kb("VmHWM")
    del session
    start = time.perf_counter()
    session = _session(model)
    warm_us = (time.perf_counter() - start) * 1e6
    after_warm_peak = memory_kb("VmHWM")
    feeds = random_inputs(session)
    before_run = memory_kb("VmRSS")
    times, peaks = [], []
    for _ in range(PROFILE_RUNS):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(round((time.perf_counter() - start) * 1e6))
        peaks.append(memory_kb("VmHWM"))
    del session  # per-node times come from a separate profiled run: the profiler slows the timed ones
    session = _session(model, profile_prefix=str(result.with_suffix("")))
    session.run(None, feeds)
    trace = Path(session.end_profiling())
    layers = _layers(json.loads(trace.read_text()))
    trace.unlink()
    result.write_text(json.dumps({
        "execution_time": round(statistics.median(times)),
        "all_execution_times": times,
        "cold_load_time": round(cold_us), "warm_load_time": round(warm_us),
        "cold_load_peak": [before_load * 1024, after_cold_peak * 1024],
        "warm_load_peak": [before_load * 1024, after_warm_peak * 1024],
        "execution_peak": [min(peaks) * 1024, max(peaks) * 1024],
        "execution_increase": [(min(peaks) - before_run) * 1024, (max(peaks) - before_run) * 1024],
        "layers": layers,
    }))


def _layers(trace: list[dict]) -> list[dict]:
    """Per-node kernel time (us) of one profiled run, from onnxruntime's trace."""
    totals: dict[str, dict] = {}
    for event in trace:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        name = event["name"][: -len("_kernel_time")]
        entry = totals.setdefault(name, {"name": name, "type": event["args"].get("op_name", ""),
                                         "provider": event["args"].get("provider", ""), "time": 0})
        entry["time"] += event["dur"]
    return list(totals.values())


def infer(model: Path, result: Path, inputs: Path, outputs: Path) -> None:
    session = _session(model)
    names = [spec.name for spec in session.get_inputs()]
    with h5py.File(inputs, "r") as h5:
        entries = {h5["data"][k].attrs["name"]: h5["data"][k] for k in h5["data"]}
        missing = [n for n in names if n not in entries]
        if missing:
            raise ValueError(f"inputs lack {', '.join(missing)}")
        count = int(entries[names[0]].attrs["batch_count"])
        samples = [{n: np.array(entries[n][f"batch_{i}"]) for n in names} for i in range(count)]
    results = [session.run(None, feeds) for feeds in samples]
    with h5py.File(outputs, "w") as h5:
        for index, spec in enumerate(session.get_outputs()):
            for i, values in enumerate(results):
                h5.create_dataset(f"data/{index}/batch_{i}", data=values[index])
            group = h5[f"data/{index}"]
            group.attrs["name"], group.attrs["order"], group.attrs["batch_count"] = spec.name, index, len(results)
    result.write_text(json.dumps({"samples": len(results), "peak": memory_kb("VmHWM") * 1024}))


def main(argv: list[str]) -> int:
    mode, model, result, *rest = argv
    try:
        if mode == "profile":
            profile(Path(model), Path(result))
        else:
            infer(Path(model), Path(result), Path(rest[0]), Path(rest[1]))
    except Exception as exc:  # the service reports it as the job's failure reason
        Path(result).write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
