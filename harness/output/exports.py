"""Exports of a stored run for other tools.

- `pytest-benchmark`: the JSON that `pytest-benchmark compare` and dashboards reading that
  format load. One benchmark per time metric (unit ms) x variant x target, its samples in
  seconds (pytest-benchmark's unit), statistics computed by pytest-benchmark's own Stats.
  Other metrics (bytes, rates, ratios) have no place in a timing schema and are left out.
- `csv` / `parquet`: every measured sample, one row each, via pandas (parquet: pyarrow).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from pytest_benchmark import __version__ as pytest_benchmark_version
from pytest_benchmark.stats import Stats

from harness.measure.metrics import METRICS
from harness.store import Store

FORMATS = ("pytest-benchmark", "csv", "parquet")
SUFFIX = {"pytest-benchmark": ".json", "csv": ".csv", "parquet": ".parquet"}


def samples_frame(store: Store, run_id: str) -> pd.DataFrame:
    """One row per measured sample (warm-ups excluded) of the run."""
    run = store.run(run_id)
    rows = []
    for result in store.results(run_id):
        for s in store.samples(run_id, result.variant_key, result.target_key):
            rows.append({"run_id": run_id, "scenario": run.scenario, "variant": result.variant_key,
                         "target": result.target_key, "emulated": result.target.get("emulated", False),
                         "metric": s.metric, "unit": METRICS[s.metric].unit, "value": s.value,
                         "repetition": s.repetition, "prompt_id": s.prompt_id})
    columns = ["run_id", "scenario", "variant", "target", "emulated", "metric", "unit", "value", "repetition",
               "prompt_id"]
    return pd.DataFrame.from_records(rows, columns=columns)


def pytest_benchmark_document(store: Store, run_id: str) -> dict:
    run = store.run(run_id)
    env = run.environment
    delay = env.get("test_delay_ms_per_token")  # a run slowed on purpose says so in every benchmark
    benchmarks = []
    for result in store.results(run_id):
        samples = store.samples(run_id, result.variant_key, result.target_key)
        for name, metric in METRICS.items():
            seconds = [s.value / 1e3 for s in samples if s.metric == name]
            if metric.unit != "ms" or not seconds:
                continue
            stats = Stats()
            for value in seconds:
                stats.update(value)
            param = f"{result.variant_key}@{result.target_key}"
            benchmarks.append({
                "group": name,
                "name": f"{name}[{param}]",
                "fullname": f"{run.scenario}::{name}[{param}]",
                "params": {"variant": result.variant_key, "target": result.target_key},
                "param": param,
                "extra_info": {"metric": name, "description": metric.description, "run_id": run_id,
                               "emulated": result.target.get("emulated", False), "target": result.target,
                               **({"test_delay_ms_per_token": delay} if delay else {})},
                "options": {},
                "stats": {**stats.as_dict(), "data": seconds, "iterations": 1},
            })
    return {
        "machine_info": {"node": env.get("hostname"), "processor": env.get("cpu"), "machine": env.get("cpu"),
                         "python_implementation": "CPython", "python_version": env.get("python"),
                         "system": env.get("os"), "release": env.get("os"), "cpu": {"count": env.get("cpu_count")}},
        "commit_info": {"id": run.git_commit, "dirty": (run.git_commit or "").endswith("-dirty"),
                        "project": "hil-harness", "branch": None},
        "benchmarks": benchmarks,
        "datetime": pd.Timestamp(run.started_at, unit="s", tz="UTC").isoformat(),
        "version": pytest_benchmark_version,
    }


def export(store: Store, run_id: str, fmt: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "pytest-benchmark":
        path.write_text(json.dumps(pytest_benchmark_document(store, run_id), indent=1), encoding="utf-8")
    elif fmt == "csv":
        samples_frame(store, run_id).to_csv(path, index=False)
    else:
        samples_frame(store, run_id).to_parquet(path, index=False)
