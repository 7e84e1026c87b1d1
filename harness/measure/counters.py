"""Counters: turn runner events into raw samples of the metrics in `harness.measure.metrics`.

The runner reports only what it observed (timestamps, token ids, byte counts); every
derived number is computed here, the same way for every target.
"""

from __future__ import annotations

import re
import string

from harness.measure.metrics import METRICS, STATS_METRICS
from harness.measure import scores
from harness.run.protocol import Counters, Fidelity, Loaded, Process, ReferenceFidelity, Request, State
from harness.spec.prompts import Prompt
from harness.store import Sample
from harness.measure.style import style_score


def load_samples(event: Loaded, repetition: int) -> list[Sample]:
    """From the runner's `Loaded` event: one sample each per process."""
    names = ["load_ms", "weights_bytes", "kv_cache_bytes"] + (["adapter_bytes"] if event.adapter_bytes else [])
    return [Sample(name, float(getattr(event, name)), repetition, None) for name in names]


def process_samples(event: Process, repetition: int) -> list[Sample]:
    """From the target's `Process` event, measured outside the runner."""
    return [Sample(name, float(value), repetition, None)
            for name, value in (("peak_rss_bytes", event.peak_rss_bytes), ("pss_bytes", event.pss_bytes),
                                ("load_peak_rss_bytes", event.load_peak_rss_bytes))
            if value is not None]


def device_samples(event: State, repetition: int) -> list[Sample]:
    """From a device target's `State` event after the run: energy, when it was on battery."""
    return [] if event.energy_j is None else [Sample("energy_j", float(event.energy_j), repetition, None)]


def request_samples(event: Request, repetition: int, prompt: Prompt,
                    baseline_tokens: list[int] | None, style_markers: tuple[str, ...] | None = None) -> list[Sample]:
    """From one `Request` event: latency counters, plus accuracy where a reference exists (the
    prompt's task scores, or exact_match) and the style score where the output's adapter has
    style markers."""
    times = event.token_times_s
    prompt_id = event.prompt_id
    samples = [] if event.e2e_s is None else [Sample("e2e_ms", event.e2e_s * 1e3, repetition, prompt_id)]
    if times:
        ttft = times[0]
        samples.append(Sample("ttft_ms", ttft * 1e3, repetition, prompt_id))
        samples.append(Sample("prefill_tokens_per_s", event.prompt_tokens / ttft, repetition, prompt_id))
    if len(times) >= 2:
        samples.append(Sample("decode_tokens_per_s", decode_rate(times), repetition, prompt_id))
        samples += gap_samples(times, "tokens_per_step" in event.stats, repetition, prompt_id)
    samples += [Sample(name, value, repetition, prompt_id) for name, value in task_scores(event.text, prompt).items()]
    if baseline_tokens is not None:
        samples.append(Sample("agreement_with_baseline", agreement(event.token_ids, baseline_tokens),
                              repetition, prompt_id))
    if style_markers is not None:
        samples.append(Sample("style_score", style_score(event.text, style_markers), repetition, prompt_id))
    return samples + technique_samples(event, repetition)


def gap_samples(times: list[float], speculative: bool, repetition: int, prompt_id: str) -> list[Sample]:
    """Gaps between tokens (`itl_ms`); with speculative decoding, which emits the tokens one
    verify step accepts at one instant, gaps between steps instead (`step_ms`): its token
    gaps would be mostly zeros, not comparable with one token per step."""
    if speculative:
        steps = sorted(set(times))
        return [Sample("step_ms", (b - a) * 1e3, repetition, prompt_id) for a, b in zip(steps, steps[1:])]
    return [Sample("itl_ms", (b - a) * 1e3, repetition, prompt_id) for a, b in zip(times, times[1:])]


def decode_rate(token_times: list[float]) -> float:
    """Decode tokens/s: tokens after the first over the time from the first to the last."""
    return (len(token_times) - 1) / (token_times[-1] - token_times[0])


def technique_samples(event: Request, repetition: int) -> list[Sample]:
    """DS2D, adapter and multi-stream counters the runner measured for this output."""
    stats, prompt_id = event.stats, event.prompt_id
    samples = [Sample(name, float(stats[name]), repetition, prompt_id) for name in STATS_METRICS if name in stats]
    samples += [Sample(f"acceptance_depth_{d}", float(share), repetition, prompt_id)
                for d, share in enumerate(stats.get("acceptance_by_depth", [])[:8], start=1)]
    return samples


def task_scores(text: str, prompt: Prompt) -> dict[str, float]:
    """The prompt's task scores of an output (harness.measure.scores); exact_match alone for a
    prompt with a reference and no scores named."""
    if prompt.reference is None:
        return {}
    names = prompt.scores or ("exact_match",)
    reference = prompt.reference if isinstance(prompt.reference, str) else prompt.reference[0]
    score = {"exact_match": lambda: exact_match(text, prompt.reference),
             "chrf": lambda: scores.chrf(text, reference),
             "qa_f1": lambda: scores.qa_f1(text, reference),
             "language_match": lambda: scores.language_match(text, prompt.language or "")}
    return {name: score[name]() for name in names}


def reference_fidelity_samples(event: ReferenceFidelity, repetition: int) -> list[Sample]:
    """From a `ReferenceFidelity` event: an accuracy item's teacher-forced counters."""
    samples = [Sample("tf_kld", kld, repetition, event.prompt_id) for kld in event.kld]
    return samples + [Sample("tf_top1_agreement", event.top1_agreement, repetition, event.prompt_id),
                      Sample("tf_ppl_ratio", event.ppl_ratio, repetition, event.prompt_id)]


def fidelity_samples(event: Fidelity, repetition: int) -> list[Sample]:
    """From a `Fidelity` event: KL against the baseline, scored after the timed work."""
    return [Sample("kld_vs_baseline", event.kld, repetition, event.prompt_id)]


def agreement(tokens: list[int], baseline: list[int]) -> float:
    """Share of positions holding the same token, over the longer of the two sequences."""
    longest = max(len(tokens), len(baseline))
    if longest == 0:
        return 1.0
    return sum(a == b for a, b in zip(tokens, baseline)) / longest


def normalize(text: str) -> str:
    """Lower case, single spaces, no surrounding punctuation: 'Paris.' == 'paris'."""
    return re.sub(r"\s+", " ", text).strip().strip(string.punctuation + " ").lower()


def exact_match(text: str, reference: str | list[str]) -> float:
    """1.0 when the normalized output equals the (or one of the) accepted answers."""
    accepted = [reference] if isinstance(reference, str) else reference
    return float(normalize(text) in {normalize(answer) for answer in accepted})


def target_samples(event: Counters, repetition: int) -> list[Sample]:
    """From a target's own `Counters` event (aihub): each value, or each of a list of values."""
    samples = []
    for name, value in event.counters.items():
        if name not in METRICS:
            raise ValueError(f"counter {name!r} is not in the metric registry (harness/measure/metrics.yaml)")
        values = value if isinstance(value, list) else [value]
        samples += [Sample(name, float(v), repetition, event.prompt_id) for v in values]
    return samples
