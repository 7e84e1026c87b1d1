"""The accuracy grid: each variant against the variant it is scored against, per language x task.

Accuracy items are the unit here, not runner processes: greedy decoding gives an item the
same output in every repetition, so repetitions add no information about accuracy; what
varies is which items were asked. Each item's value is the mean over its repetitions
(and, for `tf_kld`, over its reference positions), and a cell's interval is over its items:

- task scores (harness.measure.scores): the mean paired difference variant - against, with
  a 95 % Student t interval of the item differences;
- `tf_kld` mean and `tf_top1_agreement`: the mean over items with a t interval; `tf_ppl_ratio`:
  the geometric mean, with the t interval of the log ratios;
- `tf_kld` p99: the 99th percentile of all the cell's positions, with a percentile bootstrap
  that resamples items whole (scipy.stats.bootstrap).

Rows come per (language, task), per language over all tasks (task "all") and per task over
all languages (language "all"). An interval of a single item is the point itself, and says so (n = 1).

A variant on llama.cpp has no per-item fidelity: llama-perplexity --kl-divergence scores each
cell's text as a whole (harness.run.native) and prints means with standard errors over the
positions it scored. Its cells carry those: mean +- 1.96 standard errors (positions taken as
independent: narrower than an interval over items would be), p99 as a point; its "all" rows
are position-weighted means of its cells, their errors combined as independent, and no p99.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from harness.measure.scores import TASK_SCORES
from harness.spec.scenario import GRID_FIDELITY, ScenarioFile
from harness.spec.variant import Variant

FIDELITY = [(metric, stat) for metric, stats in GRID_FIDELITY.items() for stat in stats]
ALL = "all"
_SEED = 20261202


@dataclass(frozen=True)
class Cell:
    language: str
    task: str
    metric: str
    stat: str  # task scores: "delta" (variant - against); fidelity: mean, p99, geomean
    n: int  # items
    value: float  # the delta, or the fidelity statistic
    interval: tuple[float, float]
    variant_mean: float | None = None  # task scores: both sides' means
    against_mean: float | None = None
    basis: str = "items"  # what the interval rests on


def comparisons(document: dict, spec: ScenarioFile) -> list[dict]:
    """One entry per (variant, target) scored against another on accuracy items: its cells.
    A variant with adapters is scored against the scenario's adapter_baseline when it has one."""
    items = {p["id"]: (p["language"], p["kind"]) for p in document["scenario"].get("prompts", []) if p.get("language")}
    if not items:
        return []
    entries = []
    for result in document["results"]:
        variant = Variant.from_dict(result["variant"])
        against = spec.scored_against(variant).matches
        if against(variant) or result["status"] != "ok":
            continue
        reference = next((r for r in document["results"] if r["target"] == result["target"]
                          and r["status"] == "ok" and against(Variant.from_dict(r["variant"]))), None)
        if reference is None:
            continue
        entries.append({"variant": variant.key, "against": Variant.from_dict(reference["variant"]).key,
                        "target": result["target"], "cells": [asdict(c) for c in cells(result, reference, items)]})
    return entries


def cells(result: dict, reference: dict, items: dict[str, tuple[str, str]]) -> list[Cell]:
    groups = _groups(items)
    out = []
    for metric in TASK_SCORES:
        mine, theirs = _per_item(result, metric), _per_item(reference, metric)
        for (language, task), ids in groups.items():
            paired = [i for i in ids if i in mine and i in theirs]
            if paired:
                out.append(_delta(language, task, metric, [mine[i] for i in paired], [theirs[i] for i in paired]))
    tool = [job for job in result.get("jobs", []) if job.get("kind") == "kl_divergence"]
    if tool:
        return out + _tool_cells(tool)
    for metric, stat in FIDELITY:
        positions = _positions(result, metric)
        for (language, task), ids in groups.items():
            values = [positions[i] for i in ids if i in positions]
            if values:
                out.append(_fidelity(language, task, metric, stat, values))
    return out


# llama-perplexity's summary fields per grid statistic: (value, standard error)
_TOOL = {("tf_kld", "mean"): ("kld_mean", "kld_mean_se"), ("tf_kld", "p99"): ("kld_p99", None),
         ("tf_top1_agreement", "mean"): ("same_top_p", "same_top_p_se"),
         ("tf_ppl_ratio", "geomean"): ("ppl_ratio", "ppl_ratio_se")}


def _tool_cells(records: list[dict]) -> list[Cell]:
    out = []
    rows: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for record in records:
        for key in _rows(record["language"], record["task"]):
            rows[key].append(record)
    for (language, task), group in rows.items():
        positions = np.array([r["positions"] for r in group])
        weights = positions / positions.sum()
        for (metric, stat), (field, error) in _TOOL.items():
            if len(group) > 1 and error is None:
                continue  # a percentile of the pooled positions is not a mix of the cells'
            value = float(weights @ np.array([r[field] for r in group]))
            # no error where the tool printed none ("nan": a model against itself)
            errors = np.array([r.get(error, 0.0) ** 2 for r in group]) if error else np.zeros(len(group))
            half = 1.96 * float(np.sqrt(weights**2 @ errors))
            out.append(Cell(language, task, metric, stat, sum(r["items"] for r in group), value,
                            (value - half, value + half), basis=f"llama-perplexity, {int(positions.sum())} positions"))
    return out


def _groups(items: dict[str, tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for item, (language, task) in items.items():
        for key in _rows(language, task):
            groups[key].append(item)
    return dict(groups)


def _rows(language: str, task: str) -> tuple[tuple[str, str], ...]:
    """The grid rows one cell's items count in: the cell, its language's and its task's."""
    return (language, task), (language, ALL), (ALL, task)


def _per_item(result: dict, metric: str) -> dict[str, float]:
    return {item: float(np.mean(values)) for item, values in _positions(result, metric).items()}


def _positions(result: dict, metric: str) -> dict[str, list[float]]:
    entry = result["metrics"].get(metric)
    values: dict[str, list[float]] = defaultdict(list)
    if entry:
        for value, prompt in zip(entry["samples"], entry["sample_prompts"]):
            values[prompt].append(value)
    return dict(values)


def _delta(language: str, task: str, metric: str, mine: list[float], theirs: list[float]) -> Cell:
    differences = np.array(mine) - np.array(theirs)
    return Cell(language, task, metric, "delta", len(mine), float(differences.mean()), _t_interval(differences),
                float(np.mean(mine)), float(np.mean(theirs)))


def _fidelity(language: str, task: str, metric: str, stat: str, per_item: list[list[float]]) -> Cell:
    means = np.array([np.mean(values) for values in per_item])
    if stat == "p99":
        value = float(np.percentile(np.concatenate(per_item), 99))
        return Cell(language, task, metric, stat, len(per_item), value, _p99_interval(per_item, value))
    if stat == "geomean":
        lo, hi = _t_interval(np.log(means))
        return Cell(language, task, metric, stat, len(means), float(np.exp(np.log(means).mean())),
                    (math.exp(lo), math.exp(hi)))
    return Cell(language, task, metric, stat, len(means), float(means.mean()), _t_interval(means))


def _t_interval(values: np.ndarray) -> tuple[float, float]:
    mean = float(values.mean())
    if len(values) < 2 or float(values.std()) == 0.0:
        return mean, mean
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=stats.sem(values))
    return float(lo), float(hi)


def _p99_interval(per_item: list[list[float]], value: float) -> tuple[float, float]:
    if len(per_item) < 2:
        return value, value
    arrays = [np.asarray(values) for values in per_item]

    def p99(indices: np.ndarray) -> float:
        return float(np.percentile(np.concatenate([arrays[int(i)] for i in indices]), 99))

    result = stats.bootstrap((np.arange(len(arrays)),), p99, n_resamples=1000, method="percentile",
                             vectorized=False, random_state=np.random.default_rng(_SEED))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)
