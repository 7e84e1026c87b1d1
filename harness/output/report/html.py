"""The HTML report: one self-contained file (inline CSS, charts as data URIs, no network).

All text goes through jinja2's autoescaping, and the pandas tables through `to_html`'s
escaping; nothing from a scenario, a prompt or a model output is marked safe unescaped.
It stays readable at 50 variants and 100 past runs: sections fold (<details>), and a
chart with more rows than CHART_LIMIT gives way to its table.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
import pandas as pd
from markupsafe import Markup

from harness.analysis import grid
from harness.analysis.budgets import Verdict, evaluate, spec_of, variant_of
from harness.output.format import fmt
from harness.analysis.history import Series
from harness.measure.metrics import METRICS
from harness.output.report import charts
from harness.analysis.stats import Estimate, Observations, paired_ratio
from harness.spec.scenario import Budget, ScenarioFile
from harness.targets.base import TargetInfo

CHART_LIMIT = 16  # variant x target rows in one chart
TREND_LINES = 12  # series in one trend chart
TREND_METRICS = ("decode_tokens_per_s", "ttft_ms", "e2e_ms", "peak_rss_bytes")
SIDE_BY_SIDE = 6  # output columns shown side by side; more: one table per prompt
GRID_OPEN = {("chrf", "delta"), ("tf_top1_agreement", "mean")}  # the accuracy grid's tables shown unfolded

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("harness.output.report", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


_ENV.filters["fmt"] = fmt
_ENV.filters["target_key"] = lambda target: TargetInfo(**target).key


def _target_label(target: dict) -> str:
    return TargetInfo(**target).key + (" (emulated)" if target["emulated"] else "")


def _interval(bounds: list[float] | tuple[float, float], kind: str) -> str:
    """An interval, marked when it is the range of fewer than MIN_PROCESSES processes."""
    text = f"[{fmt(bounds[0])}, {fmt(bounds[1])}]"
    return text if kind == "ci95" else f"{text} range"


def _paired_to_baseline(metric: dict, base: dict | None) -> Estimate | None:
    if base is None:
        return None
    try:
        return paired_ratio(Observations.of(metric), Observations.of(base))
    except ValueError:  # no (repetition, prompt) both measured
        return None


def _find(results: list[dict], target: dict, selector) -> dict | None:
    return next((r for r in results if r["target"] == target and selector.matches(variant_of(r))), None)


def _headline(document: dict, verdicts: list[Verdict]) -> list[dict]:
    """Each comparison the scenario declares: a budget on a ratio between two variants, or on a
    counter that is itself a comparison (DS2D vs greedy, K streams vs K runs, KL vs the baseline)."""
    spec, results = spec_of(document), document["results"]
    rows = _grid_headline(verdicts, results)
    for v in verdicts:
        if v.where:
            continue  # per budgets: one row each, above
        budget, metric = v.budget, METRICS[v.budget.metric]
        ratio = budget.bound[0].endswith("_ratio")
        if not (ratio or metric.versus):
            continue
        result = _result(results, v)
        rows.append({
            "what": f"{v.variant} vs {_versus(v, result, spec, results)}", "metric": metric.name, "on": budget.kind,
            "target": v.target, "emulated": result["target"]["emulated"], "measured": v.measured,
            "bound": _bound(budget), "stat": f"paired ratio of {budget.stat}s" if ratio else budget.stat,
            "outcome": v.outcome, "failed": v.failed,
        })
    return rows


def _result(results: list[dict], v: Verdict) -> dict:
    """The variant x target result a verdict is about."""
    return next(r for r in results if (variant_of(r).key, TargetInfo(**r["target"]).key) == (v.variant, v.target))


def _versus(v: Verdict, result: dict, spec: ScenarioFile, results: list[dict]) -> str | None:
    """What a budget's measured value compares the variant with: the ratio's reference variant,
    or what the counter itself compares with (None for a plain counter)."""
    metric = METRICS[v.budget.metric]
    if v.budget.bound[0].endswith("_ratio"):
        reference = _find(results, result["target"], v.budget.against or spec.baseline)
        return variant_of(reference).key if reference else "(no reference)"
    if metric.versus == "baseline":
        return _variant_key(_find(results, result["target"], spec.baseline)) + " (baseline)"
    return metric.versus


def _bound(budget: Budget) -> str:
    kind, limit = budget.bound
    return f"{'<=' if kind.startswith('max') else '>='} {limit:g}{'x' if kind.endswith('_ratio') else ''}"


def _claims(document: dict, verdicts: list[Verdict]) -> list[dict]:
    """The budgets that check a published claim, one row per target, with a one-line reading:
    what was measured here beside what the claim says."""
    spec, results, rows = spec_of(document), document["results"], []
    for v in verdicts:
        claim = v.budget.claim
        if claim is None or v.where:
            continue
        result, metric = _result(results, v), METRICS[v.budget.metric]
        versus = _versus(v, result, spec, results)
        emulated = result["target"]["emulated"]
        ratio = v.budget.bound[0].endswith("_ratio")
        interval = _interval(v.measured.interval, v.measured.kind) if v.measured else None
        if v.measured is None:
            measured = "nothing measured"
        else:
            unit = "x" if ratio else f" {metric.unit}"
            measured = f"{fmt(v.measured.value)}{unit} {interval}, n = {v.measured.processes} processes"
        where = v.target + (" (emulated)" if emulated else "")
        checked = f"{metric.name} {'of ' if ratio else ''}{v.variant}" + (f" vs {versus}" if versus else "")
        rows.append({
            "technique": claim.technique, "paper": claim.paper, "checked": checked, "bound": _bound(v.budget),
            "target": v.target, "emulated": emulated, "measured": v.measured, "outcome": v.outcome, "failed": v.failed,
            "interval": interval,
            "reading": f"{claim.technique}: {checked} measured {measured} on {where}, "
                       f"{v.outcome} against {_bound(v.budget)}; the paper claims {claim.paper}.",
        })
    return rows


def _grid_headline(verdicts: list[Verdict], results: list[dict]) -> list[dict]:
    """A per budget's verdicts in the accuracy grid, one headline row per variant and target:
    how many rows pass, and the rows that do not."""
    groups: dict[tuple[int, str, str], list[Verdict]] = {}
    for v in verdicts:
        if v.where:
            groups.setdefault((id(v.budget), v.variant, v.target), []).append(v)
    rows = []
    for (_, variant, target), group in groups.items():
        budget = group[0].budget
        kind, limit = budget.bound
        result = _result(results, group[0])
        worst = [v for v in group if v.outcome != "pass"]
        outcome = "fail" if any(v.outcome == "fail" for v in group) else "inconclusive" if worst else "pass"
        passed = len(group) - len(worst)
        not_passing = ", ".join(f"{'/'.join(p for p in v.where if p != grid.ALL)} {v.outcome}" for v in worst)
        rows.append({
            "what": f"{variant} per {budget.per}", "metric": budget.metric, "on": None, "target": target,
            "emulated": result["target"]["emulated"], "measured": None,
            "detail": f"{passed} of {len(group)} {budget.per} rows pass" + (f"; {not_passing}" if worst else ""),
            "bound": f"{'<=' if kind.startswith('max') else '>='} {limit:g}{' change' if kind.endswith('_delta') else ''}",
            "stat": "change, items paired" if budget.grid_stat == "delta" else budget.grid_stat, "outcome": outcome,
            "failed": any(v.failed for v in group),
        })
    return rows


def _variant_key(result: dict | None) -> str:
    return variant_of(result).key if result else "-"


def _metric_tables(document: dict, baseline_key: str) -> list[dict]:
    """Per metric: a pandas table, one row per variant x target, with the ratio to the baseline."""
    results = document["results"]
    tables = []
    for name, metric in METRICS.items():
        records = []
        for result in (r for r in results if name in r["metrics"]):
            m = result["metrics"][name]
            base = next((r for r in results if r["target"] == result["target"]
                         and variant_of(r).key == baseline_key and name in r["metrics"]), None)
            ratio = _paired_to_baseline(m, base["metrics"][name] if base else None)
            records.append({
                "variant": variant_of(result).key, "target": _target_label(result["target"]),
                "processes": m["processes"], "requests": m["requests"], "samples": m["n"],
                "estimate": fmt(m["estimate"]), "interval": _interval(m["interval"], m["interval_kind"]),
                "sample median": fmt(m["median"]), "p90": fmt(m["p90"]), "p99": fmt(m["p99"]),
                "paired ratio to baseline": fmt(ratio.value) if ratio else "-",
                "ratio interval": _interval(ratio.interval, ratio.kind) if ratio else "-",
            })
        if records:
            table = pd.DataFrame.from_records(records).to_html(index=False, escape=True, border=0, classes="metric")
            tables.append({"metric": metric, "rows": len(records), "html": Markup(table)})
    return tables


def _outputs(document: dict) -> tuple[list[str], list[dict]]:
    """Outputs side by side: one row per prompt, one column per variant x target x adapter (style)."""
    columns: list[str] = []
    cells: dict[tuple[str, str], str] = {}  # (prompt, column) -> text
    for result in document["results"]:
        for output in result["outputs"]:
            column = f"{variant_of(result).key} @ {_target_label(result['target'])}"
            if output.get("adapter"):
                column += f" · {output['adapter']}"
            if column not in columns:
                columns.append(column)
            cells[(output["prompt_id"], column)] = output["text"]
    prompts = list(dict.fromkeys(prompt for prompt, _ in cells))
    return columns, [{"prompt_id": p, "texts": [cells.get((p, c), "") for c in columns]} for p in prompts]


def _targets(document: dict) -> list[dict]:
    """What stands behind each number: every target's identity and state as the target reported it."""
    return list({TargetInfo(**r["target"]).key: r["target"] for r in document["results"]}.values())


def _states(document: dict) -> Markup | None:
    """Each target's state before and after every runner process: thermal, clocks, load, battery."""
    records = [{"variant": variant_of(r).key, "target": _target_label(r["target"]),
                "repetition": state["repetition"] + 1, "phase": state["phase"], **_state_cells(state)}
               for r in document["results"] for state in r.get("device_states", [])]
    if not records:
        return None
    columns = ["variant", "target", "repetition", "phase", *_state_cells({}, every=True)]
    table = pd.DataFrame.from_records(records, columns=columns).dropna(axis="columns", how="all").fillna("")
    return Markup(table.to_html(index=False, escape=True, border=0, classes="metric"))


def _state_cells(state: dict, every: bool = False) -> dict[str, str | None]:
    """The comparable part of a state; phones and hosts report different things, so cells may
    stay empty (`every`: keep the empty ones, for the column order)."""
    measured = [khz / 1e3 for khz in state.get("cpu_freq_khz", {}).values()]
    if not measured and state.get("cpu_mhz_source") == "cpufreq":
        measured = list(state["cpu_mhz"].values())
    nominal = list(state.get("cpu_mhz", {}).values()) if state.get("cpu_mhz_source") == "nominal" else []
    temperatures = state.get("temperatures_c") or {}
    cells = {
        "thermal status": state.get("thermal_status"),
        "max temp °C": max(temperatures.values()) if temperatures else None,
        "CPU MHz": _span(measured),
        "nominal CPU MHz": _span(nominal),
        "load (1 min)": state.get("load_1m"),
        "other processes' CPU s": state.get("other_cpu_s"),
        "steal s": state.get("steal_s"),
        "battery": f"{state['battery_level']} % · {state.get('plugged', '?')}" if state.get("battery_level") is not None else None,
        "screen": state.get("screen"),
        "warnings": "; ".join(state.get("warnings", [])) or None,
    }
    return {name: fmt(value) if isinstance(value, float) else value for name, value in cells.items()
            if value is not None or every}


def _span(values: list[float]) -> str | None:
    if not values:
        return None
    low, high = f"{min(values):,.0f}", f"{max(values):,.0f}"
    return low if low == high else f"{low}-{high}"


def _trends(series: list[Series]) -> dict:
    """Per trend metric: a chart when the series fit in one, and a table of every series with its steps."""
    by_metric = {m: [s for s in series if s.metric == m and len(s.points) > 1] for m in TREND_METRICS}
    rows = [{"variant": s.variant, "target": s.target + (" (emulated)" if s.emulated else ""), "metric": s.metric,
             "runs": len(s.points), "first": fmt(s.points[0].median), "last": fmt(s.points[-1].median),
             "steps": "; ".join(f"{p.run_id}: {p.step} x{p.change:.2f}" for p in s.steps) or "-"}
            for s in series if len(s.points) > 1]
    trend_charts = {m: _trend_chart(s, m) for m, s in by_metric.items() if s}
    return {
        "charts": {m: chart for m, chart in trend_charts.items() if chart},
        "steps": [r for r in rows if r["steps"] != "-"],
        "table": Markup(pd.DataFrame.from_records(rows).to_html(index=False, escape=True, border=0, classes="metric"))
        if rows else None,
    }


def _trend_chart(series: list[Series], metric: str) -> dict | None:
    """Every series in one chart when they fit; past TREND_LINES, only those with a step change."""
    if len(series) <= TREND_LINES:
        return {"uri": charts.trend(series, metric), "note": None}
    stepped = [s for s in series if s.steps][:TREND_LINES]
    if not stepped:
        return None
    return {"uri": charts.trend(stepped, metric),
            "note": f"{len(stepped)} of {len(series)} series: those with a step change (every series is in the table)"}


def _charts(results: list[dict]) -> dict[str, str | None]:
    if len(results) > CHART_LIMIT:
        return {}
    return {
        "End-to-end latency per request": charts.latency_distribution(results, "e2e_ms"),
        "Decode speed": charts.median_with_interval(results, "decode_tokens_per_s"),
        "Memory": charts.memory_split(results),
        "DS2D acceptance by draft depth": charts.acceptance_by_depth(results),
        "Multi-stream speedup by K": charts.speedup_by_streams(results),
    }


def render_html(document: dict, verdicts: list[Verdict] | None = None, trends: list[Series] | None = None) -> str:
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
        claims=_claims(document, verdicts),
        headline=_headline(document, verdicts),
        accuracy=_accuracy(document, verdicts),
        tables=_metric_tables(document, baseline_key),
        output_columns=columns,
        outputs=outputs,
        side_by_side=len(columns) <= SIDE_BY_SIDE,
        targets=_targets(document),
        states=_states(document),
        any_emulated=any(r["target"]["emulated"] for r in results),
        charts=_charts(results),
        chart_limit=CHART_LIMIT,
        trends=_trends(trends or []),
        delay=document["environment"].get("test_delay_ms_per_token"),
    )


def write_html(document: dict, path: Path, verdicts: list[Verdict] | None = None,
               trends: list[Series] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(document, verdicts, trends), encoding="utf-8")


def _accuracy(document: dict, verdicts: list[Verdict]) -> list[dict]:
    """Per comparison of the accuracy grid, one language x task table per metric and statistic;
    a cell is coloured by the verdict of a per budget on it, else by whether its interval
    excludes no change (task scores)."""
    judged = {(v.variant, v.target, v.budget.metric, v.budget.grid_stat, v.where): v for v in verdicts if v.where}
    out = []
    for entry in document.get("accuracy", []):
        target = TargetInfo(**entry["target"]).key
        tables = []
        for metric, stat in dict.fromkeys((c["metric"], c["stat"]) for c in entry["cells"]):
            cells = {(c["language"], c["task"]): c for c in entry["cells"] if (c["metric"], c["stat"]) == (metric, stat)}
            languages = list(dict.fromkeys(k[0] for k in cells if k[0] != grid.ALL)) + [grid.ALL]
            tasks = list(dict.fromkeys(k[1] for k in cells if k[1] != grid.ALL)) + [grid.ALL]
            rows = [[_grid_cell(cells.get((language, task)), judged.get((entry["variant"], target, metric, stat,
                                                                          (language, task))), METRICS[metric].better)
                     for task in tasks] for language in languages]
            tables.append({"metric": METRICS[metric], "stat": stat, "tasks": tasks, "languages": languages,
                           "rows": rows, "open": (metric, stat) in GRID_OPEN})
        out.append({"variant": entry["variant"], "against": entry["against"], "target": _target_label(entry["target"]),
                    "tables": tables})
    return out


def _grid_cell(cell: dict | None, verdict: Verdict | None, better: str) -> dict:
    if cell is None:
        return {"text": "", "interval": "", "css": "", "title": ""}
    lo, hi = cell["interval"]
    if verdict is not None:
        css = "fail" if verdict.failed else verdict.outcome
    elif cell["stat"] == "delta" and (lo > 0 or hi < 0):
        css = "better" if (lo > 0) == (better == "higher") else "worse"
    else:
        css = ""
    sign = "+" if cell["stat"] == "delta" and cell["value"] > 0 else ""
    return {"text": f"{sign}{fmt(cell['value'])}", "interval": f"[{fmt(lo)}, {fmt(hi)}] n={cell['n']}", "css": css,
            "title": verdict.reason if verdict else ""}
