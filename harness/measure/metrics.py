"""The registry of counters: what each one is, its unit, and which direction is better.

Every number the harness reports is one of these; the entries are data, in `metrics.yaml`
beside this file. `scope` says what one sample is: one runner process (a load of the
model), one request, or one gap between tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    better: Literal["lower", "higher"]
    scope: Literal["process", "request", "token"]
    description: str
    versus: str | None = None  # for a counter that is itself a comparison: what it compares with
    source: Literal["harness", "runner_stats"] = "harness"  # runner_stats: in a request's stats, by name


def _load() -> dict[str, Metric]:
    entries = yaml.safe_load((Path(__file__).parent / "metrics.yaml").read_text(encoding="utf-8"))
    metrics = [Metric(source=e.pop("from", "harness"), **e) for e in entries]
    metrics += [Metric(f"acceptance_depth_{d}", "ratio", "higher", "request",
                       f"DS2D: share of draft steps whose accepted path reached depth {d}") for d in range(1, 9)]
    return {m.name: m for m in metrics}


METRICS: dict[str, Metric] = _load()
# Technique counters the runner reports in a request's stats, stored under the same names.
STATS_METRICS = tuple(name for name, m in METRICS.items() if m.source == "runner_stats")
