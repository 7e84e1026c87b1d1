"""Charts for the HTML report: matplotlib figures embedded as base64 PNG data URIs."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from harness.budgets import variant_of  # noqa: E402
from harness.targets import TargetInfo  # noqa: E402


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
    medians = [r["metrics"][metric]["median"] for r in rows]
    lows = [m - r["metrics"][metric]["ci95"][0] for m, r in zip(medians, rows)]
    highs = [r["metrics"][metric]["ci95"][1] - m for m, r in zip(medians, rows)]
    fig, ax = plt.subplots(figsize=(8, _height(len(rows))))
    ax.barh(range(len(rows)), medians, xerr=[lows, highs], capsize=4, color="#4C72B0")
    ax.set_yticks(range(len(rows)), [_label(r) for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} median with 95 % interval ({rows[0]['metrics'][metric]['unit']})")
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
