"""The HTML report: one self-contained file (inline CSS, charts as data URIs, no network).

All text goes through jinja2's autoescaping; nothing from a scenario, a prompt or a
model output is marked safe.
"""

from __future__ import annotations

import math
from pathlib import Path

import jinja2

from harness.budgets import Verdict, evaluate, spec_of, variant_of
from harness.metrics import METRICS
from harness.report import charts
from harness.stats import ratio_of_medians
from harness.targets import TargetInfo

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("harness.report", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-2):
        return f"{value:.3g}"
    return f"{value:,.2f}"


_ENV.filters["fmt"] = _fmt
_ENV.filters["target_key"] = lambda target: TargetInfo(**target).key


def _metric_tables(document: dict, baseline_key: str) -> list[dict]:
    """Per metric: one row per variant x target with median, interval and ratio to baseline."""
    tables = []
    for name, metric in METRICS.items():
        rows = []
        for result in document["results"]:
            if name not in result["metrics"]:
                continue
            m = result["metrics"][name]
            target = TargetInfo(**result["target"])
            base = next((r for r in document["results"] if TargetInfo(**r["target"]) == target
                         and variant_of(r).key == baseline_key and name in r["metrics"]), None)
            ratio, ratio_ci = (None, (None, None))
            if base is not None:
                ratio, ratio_ci = ratio_of_medians(m["samples"], base["metrics"][name]["samples"])
            rows.append({"variant": variant_of(result).key, "target": target.key, "emulated": target.emulated,
                         "m": m, "ratio": ratio, "ratio_ci": ratio_ci})
        if rows:
            tables.append({"metric": metric, "rows": rows})
    return tables


def _outputs(document: dict) -> tuple[list[str], list[dict]]:
    """Outputs side by side: one row per prompt, one column per variant x target x adapter."""
    columns: list[str] = []
    cells: dict[tuple[str, str], str] = {}  # (prompt, column) -> text
    for result in document["results"]:
        for output in result["outputs"]:
            column = f"{variant_of(result).key} @ {TargetInfo(**result['target']).key}"
            if output.get("adapter"):
                column += f" · {output['adapter']}"
            if column not in columns:
                columns.append(column)
            cells[(output["prompt_id"], column)] = output["text"]
    prompts = list(dict.fromkeys(prompt for prompt, _ in cells))
    return columns, [{"prompt_id": p, "texts": [cells.get((p, c), "") for c in columns]} for p in prompts]


def render_html(document: dict, verdicts: list[Verdict] | None = None) -> str:
    spec = spec_of(document)
    verdicts = evaluate(document) if verdicts is None else verdicts
    baseline_key = next(variant_of(r).key for r in document["results"] if spec.baseline.matches(variant_of(r)))
    columns, outputs = _outputs(document)
    results = document["results"]
    return _ENV.get_template("report.html.j2").render(
        doc=document,
        spec=spec,
        baseline_key=baseline_key,
        verdicts=verdicts,
        tables=_metric_tables(document, baseline_key),
        output_columns=columns,
        outputs=outputs,
        any_emulated=any(r["target"]["emulated"] for r in results),
        charts={
            "End-to-end latency per request": charts.latency_distribution(results, "e2e_ms"),
            "Decode speed": charts.median_with_interval(results, "decode_tokens_per_s"),
            "Memory": charts.memory_split(results),
        },
    )


def write_html(document: dict, path: Path, verdicts: list[Verdict] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(document, verdicts), encoding="utf-8")
