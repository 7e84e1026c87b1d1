"""Charts for the HTML report: matplotlib figures embedded as base64 PNG data URIs."""

from __future__ import annotations

import base64
import io
from datetime import datetime, timezone

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from harness.analysis.budgets import variant_of  # noqa: E402
from harness.measure.metrics import METRICS  # noqa: E402
from harness.targets.base import TargetInfo  # noqa: E402


def _label(result: dict) -> str:
    label = f"{variant_of(result).key}\n{TargetInfo(**result['target']).key}"
    return label + " (emulated)" if result["target"]["emulated"] else label


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _measured(results: list[dict], metric: str) -> list[dict]:
    return [r for r in results if metric in r["metrics"]]


def _height(n: int) -> float:
    return 1.2 + 0.45 * n


def _legend_label(result: dict) -> str:
    return _label(result).replace("\n", " @ ")


def _small_multiples(fig, ax, xlabel: str, ylabel: str) -> str:
    """The axes of a chart with one series per variant @ target, labelled; the PNG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return _png(fig)


def latency_distribution(results: list[dict], metric: str = "e2e_ms") -> str | None:
    rows = _measured(results, metric)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, _height(len(rows))))
    ax.boxplot([r["metrics"][metric]["samples"] for r in rows], orientation="horizontal",
               tick_labels=[_label(r) for r in rows], showfliers=True)
    ax.set_xlabel(f"{metric} (per request, warm-up excluded)")
    ax.invert_yaxis()
    return _png(fig)


def median_with_interval(results: list[dict], metric: str) -> str | None:
    rows = _measured(results, metric)
    if not rows:
        return None
    medians = [r["metrics"][metric]["estimate"] for r in rows]
    lows = [m - r["metrics"][metric]["interval"][0] for m, r in zip(medians, rows)]
    highs = [r["metrics"][metric]["interval"][1] - m for m, r in zip(medians, rows)]
    fig, ax = plt.subplots(figsize=(8, _height(len(rows))))
    ax.barh(range(len(rows)), medians, xerr=[lows, highs], capsize=4, color="#4C72B0")
    ax.set_yticks(range(len(rows)), [_label(r) for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric}: median over processes, 95 % interval or range below 5 processes "
                  f"({rows[0]['metrics'][metric]['unit']})")
    return _png(fig)


def memory_split(results: list[dict]) -> str | None:
    rows = _measured(results, "peak_rss_bytes")
    if not rows:
        return None
    mib = 1 / 2**20

    def median(r: dict, name: str) -> float:
        return r["metrics"].get(name, {}).get("median", 0.0) * mib

    weights = [median(r, "weights_bytes") for r in rows]
    kv = [median(r, "kv_cache_bytes") for r in rows]
    rest = [max(0.0, median(r, "peak_rss_bytes") - w - k) for r, w, k in zip(rows, weights, kv)]
    fig, ax = plt.subplots(figsize=(8, _height(len(rows))))
    y = range(len(rows))
    ax.barh(y, weights, label="weights", color="#4C72B0")
    ax.barh(y, kv, left=weights, label="KV cache", color="#DD8452")
    ax.barh(y, rest, left=[w + k for w, k in zip(weights, kv)], label="rest of process", color="#BBBBBB")
    ax.set_yticks(list(y), [_label(r) for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("peak RSS (MiB), split into weights, KV cache and the rest")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    return _png(fig)


def acceptance_by_depth(results: list[dict]) -> str | None:
    """DS2D: share of draft steps whose accepted path reached each depth, one line per variant."""
    rows = _measured(results, "acceptance_depth_1")
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for r in rows:
        depths = [d for d in range(1, 9) if f"acceptance_depth_{d}" in r["metrics"]]
        ax.plot(depths, [r["metrics"][f"acceptance_depth_{d}"]["median"] for d in depths], marker="o",
                label=_legend_label(r))
    ax.set_ylim(0, 1.05)
    return _small_multiples(fig, ax, "draft depth d", "share of steps reaching d (median)")


def speedup_by_streams(results: list[dict]) -> str | None:
    """Multi-stream: K sequential runs / one K-stream run, median with 95 % interval, by K."""
    rows = _measured(results, "multistream_speedup")
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.set_xlim(0.5, max(r["variant"]["streams"] for r in rows) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for r in rows:
        m = r["metrics"]["multistream_speedup"]
        k = r["variant"]["streams"]
        ax.errorbar([k], [m["estimate"]], yerr=[[m["estimate"] - m["interval"][0]], [m["interval"][1] - m["estimate"]]],
                    fmt="o", capsize=4, label=_legend_label(r))
    ax.axhline(1.0, color="#999", linewidth=1, linestyle="--")
    return _small_multiples(fig, ax, "streams K", "speedup over K sequential runs (x)")


def trend(series: list, metric: str) -> str | None:
    """One metric's median per run, one line per variant @ target, step changes marked.

    x is the run's place among all runs charted (so a variant added later lines up with
    the others), labelled with that number and the run's start time.
    """
    if not series:
        return None
    runs = sorted({(p.started_at, p.run_id) for s in series for p in s.points})
    place = {run_id: i for i, (_, run_id) in enumerate(runs)}
    fig, ax = plt.subplots(figsize=(9, 3.8))
    for s in series:
        label = f"{s.variant} @ {s.target}" + (" (emulated)" if s.emulated else "")
        ax.plot([place[p.run_id] for p in s.points], [p.median for p in s.points], marker=".", linewidth=1,
                label=label)
        for p in s.steps:
            ax.plot(place[p.run_id], p.median, marker="v" if p.step == "regressed" else "^", markersize=11,
                    color="#b3261e" if p.step == "regressed" else "#17703a")

    def started(x: float, _) -> str:
        i = round(x)
        if i != x or not 0 <= i < len(runs):
            return ""
        return f"#{i + 1}\n" + datetime.fromtimestamp(runs[i][0], timezone.utc).strftime("%m-%d %H:%M")

    ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(started))
    ax.set_xlabel("run (number, start in UTC), oldest first; a step change starts at a red down (regressed)"
                  " or green up (improved) marker")
    ax.set_ylabel(f"{metric} median ({METRICS[metric].unit})")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return _png(fig)
