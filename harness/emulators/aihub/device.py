"""An emulated device: one ONNX model run with onnxruntime on this host, in its own process.

    python -m harness.emulators.aihub.device profile MODEL.onnx RESULT.json [INPUTS.h5]
    python -m harness.emulators.aihub.device infer MODEL.onnx RESULT.json INPUTS.h5 OUTPUTS.h5

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

from harness.export.onnx_session import exact_session_options
from harness.measure.host import peak_rss_bytes, reset_peak_rss, rss_bytes

PROFILE_RUNS = 10  # timed inferences per profile job
ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int32)": np.int32,
             "tensor(int64)": np.int64}


def _session(model: Path, profile_prefix: str | None = None):
    import onnxruntime as ort

    options = exact_session_options()  # the emulated device runs the graph as written
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


def profile(model: Path, result: Path, inputs: Path | None = None) -> None:
    """Load times, PROFILE_RUNS timed runs (on the dataset's first sample, else random data), memory.

    The cold-loaded session runs once under onnxruntime's profiler for per-node times; the
    timed runs use the warm-loaded session, without the profiler's overhead.
    """
    before_load = rss_bytes()
    start = time.perf_counter()
    session = _session(model, profile_prefix=str(result.with_suffix("")))
    cold_us = (time.perf_counter() - start) * 1e6
    after_cold_peak = peak_rss_bytes()
    feeds = read_samples(inputs, session)[0] if inputs else random_inputs(session)
    session.run(None, feeds)
    trace = Path(session.end_profiling())
    layers = _layers(json.loads(trace.read_text()))
    trace.unlink()
    del session
    reset_peak_rss()  # the warm load's peak, not the cold one's
    start = time.perf_counter()
    session = _session(model)
    warm_us = (time.perf_counter() - start) * 1e6
    after_warm_peak = peak_rss_bytes()
    before_run = rss_bytes()
    times, peaks = [], []
    for _ in range(PROFILE_RUNS):
        reset_peak_rss()  # each run's own peak
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(round((time.perf_counter() - start) * 1e6))
        peaks.append(peak_rss_bytes())
    result.write_text(json.dumps({
        "execution_time": round(statistics.median(times)),
        "all_execution_times": times,
        "cold_load_time": round(cold_us), "warm_load_time": round(warm_us),
        "cold_load_peak": [before_load, after_cold_peak],
        "warm_load_peak": [before_load, after_warm_peak],
        "execution_peak": [min(peaks), max(peaks)],
        "execution_increase": [min(peaks) - before_run, max(peaks) - before_run],
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


def read_samples(inputs: Path, session) -> list[dict[str, np.ndarray]]:
    """A qai-hub dataset (h5: data/{i}/batch_{k}, attrs name/order/batch_count) as the session's feeds."""
    names = [spec.name for spec in session.get_inputs()]
    with h5py.File(inputs, "r") as h5:
        entries = {h5["data"][k].attrs["name"]: h5["data"][k] for k in h5["data"]}
        missing = [n for n in names if n not in entries]
        if missing:
            raise ValueError(f"inputs lack {', '.join(missing)}")
        count = int(entries[names[0]].attrs["batch_count"])
        return [{n: np.array(entries[n][f"batch_{i}"]) for n in names} for i in range(count)]


def infer(model: Path, result: Path, inputs: Path, outputs: Path) -> None:
    session = _session(model)
    results = [session.run(None, feeds) for feeds in read_samples(inputs, session)]
    with h5py.File(outputs, "w") as h5:
        for index, spec in enumerate(session.get_outputs()):
            for i, values in enumerate(results):
                h5.create_dataset(f"data/{index}/batch_{i}", data=values[index])
            group = h5[f"data/{index}"]
            group.attrs["name"], group.attrs["order"], group.attrs["batch_count"] = spec.name, index, len(results)
    result.write_text(json.dumps({"samples": len(results), "peak": peak_rss_bytes()}))


def main(argv: list[str]) -> int:
    mode, model, result, *rest = argv
    try:
        if mode == "profile":
            profile(Path(model), Path(result), Path(rest[0]) if rest else None)
        else:
            infer(Path(model), Path(result), Path(rest[0]), Path(rest[1]))
    except Exception as exc:  # the service reports it as the job's failure reason
        Path(result).write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
