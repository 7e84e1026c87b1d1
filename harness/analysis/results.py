"""The results document: one run read back from the store, with statistics derived.

This is the JSON that `harness run --json` writes and that reports and CI read; its
names are documented in the README and must not change.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

from harness.errors import HarnessError
from harness.measure.metrics import METRICS
from harness.analysis import grid
from harness.analysis.budgets import spec_of
from harness.analysis.stats import Observations, summarize
from harness.store import Sample, Store


def iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, timezone.utc).isoformat()


def build_results(store: Store, run_id: str | None = None) -> dict:
    """The results document of a run (the latest when no id is given)."""
    run = store.run(run_id)
    if run is None:
        raise HarnessError(f"{store.path}: run_id: no run {run_id!r} in the store" if run_id
                           else f"{store.path}: the store holds no runs")
    kinds = {p["id"]: p.get("kind", "open") for p in run.prompts}
    results = []
    for record in store.results(run.run_id):
        samples = store.samples(run.run_id, record.variant_key, record.target_key)
        result = {
            "variant": record.variant,
            "target": record.target,
            "metrics": summarize_metrics(samples),
            "metrics_by_kind": {
                kind: summarize_metrics([s for s in samples if kinds.get(s.prompt_id) == kind])
                for kind in sorted(set(kinds.values()))
            },
            "outputs": _first_outputs(store.outputs(run.run_id, record.variant_key, record.target_key)),
            "status": record.status,
        }
        if record.status != "ok":
            result["error"] = record.error
        device_states = store.device_states(run.run_id, record.variant_key, record.target_key)
        if device_states:  # local and adb targets; AI Hub reports none
            result["device_states"] = device_states
        if jobs := store.jobs(run.run_id, record.variant_key, record.target_key):
            result["jobs"] = jobs  # remote jobs (aihub): ids and links
        results.append(result)
    document = {
        "run_id": run.run_id,
        "scenario": {"name": run.scenario, "path": run.scenario_path, "sha256": run.scenario_sha256,
                     "yaml": run.scenario_yaml, "prompts": run.prompts},
        "started_at": iso(run.started_at),
        "ended_at": iso(run.ended_at),
        "run_status": run.status,
        "environment": run.environment,
        "results": results,
    }
    # the accuracy suite's language x task grid, items as the unit (harness.analysis.grid)
    document["accuracy"] = grid.comparisons(document, spec_of(document))
    return document


def summarize_metrics(samples: list[Sample]) -> dict:
    """Each metric's raw samples (with their process and prompt) and summary, in registry order.

    `median`, `mean`, `stdev`, `n`, `p50`/`p90`/`p99` describe the raw samples; `estimate`,
    `interval` (`interval_kind` ci95 or range), `processes` and `requests` are the estimate
    with the runner process as the unit (`harness.analysis.stats`). `ci95` is that interval
    when it is one, else null.
    """
    by_metric: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_metric[sample.metric].append(sample)
    metrics = {}
    for name in METRICS:
        if by_metric.get(name):
            observations = Observations.of_samples(by_metric[name])
            s = summarize(observations)
            e = s.estimate
            metrics[name] = {
                "unit": METRICS[name].unit, "median": s.median, "mean": s.mean, "stdev": s.stdev,
                "n": s.n, "p50": s.p50, "p90": s.p90, "p99": s.p99,
                "estimate": e.value, "interval": list(e.interval), "interval_kind": e.kind,
                "ci95": list(e.interval) if e.kind == "ci95" else None,
                "processes": e.processes, "requests": e.requests,
                "samples": list(observations.values), "sample_repetitions": list(observations.repetitions),
                "sample_prompts": list(observations.prompts),
            }
    return metrics


def _first_outputs(outputs: list[dict]) -> list[dict]:
    """Each (prompt, adapter) output from the first repetition that produced it (greedy repeats it)."""
    seen: dict[tuple[str, str | None], dict] = {}
    for output in outputs:
        seen.setdefault((output["prompt_id"], output["adapter"]), output)
    return [{k: o[k] for k in ("prompt_id", "adapter", "text", "token_ids")} for o in seen.values()]


def write_json(document: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, ensure_ascii=False), encoding="utf-8")
