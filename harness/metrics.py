"""The registry of counters: what each one is, its unit, and which direction is better.

Every number the harness reports is one of these. `scope` says what one sample is:
one runner process (a load of the model), one request, or one gap between tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    better: Literal["lower", "higher"]
    scope: Literal["process", "request", "token"]
    description: str
    versus: str | None = None  # for a counter that is itself a comparison: what it compares with


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("load_ms", "ms", "lower", "process", "runner start of model load to model ready"),
        Metric("ttft_ms", "ms", "lower", "request", "request start to first generated token (prefill + first token)"),
        Metric("prefill_tokens_per_s", "tokens/s", "higher", "request", "prompt tokens / time to first token"),
        Metric("decode_tokens_per_s", "tokens/s", "higher", "request", "tokens after the first / time after the first token"),
        Metric("itl_ms", "ms", "lower", "token", "gap between consecutive generated tokens"),
        Metric("e2e_ms", "ms", "lower", "request", "request start to last token, detokenized"),
        Metric("peak_rss_bytes", "bytes", "lower", "process", "peak resident set (VmHWM) of the runner process"),
        Metric("pss_bytes", "bytes", "lower", "process", "proportional set size of the runner process after the timed work (smaps_rollup Pss)"),
        Metric("energy_j", "J", "lower", "process", "battery energy over the runner process: mean of battery power before and after x duration; on battery power only"),
        Metric("weights_bytes", "bytes", "lower", "process", "bytes of weight tensors the engine holds"),
        Metric("kv_cache_bytes", "bytes", "lower", "process", "bytes of KV cache tensors the engine allocated"),
        Metric("exact_match", "ratio", "higher", "request", "normalized output equals the prompt's reference answer"),
        Metric("agreement_with_baseline", "ratio", "higher", "request", "share of greedy tokens identical to the baseline variant's, by position", "baseline"),
        Metric("kld_vs_baseline", "nats", "lower", "request", "mean KL(baseline || variant) of next-token distributions, teacher-forced on the baseline's output (top-64 + rest)", "baseline"),
        Metric("adapter_bytes", "bytes", "lower", "process", "bytes held for LoRA adapters: the bank, plus merged weight copies in merged mode"),
        Metric("adapter_switch_ms", "ms", "lower", "request", "time to make the next adapter active (runtime: new index tensor; merged: copy weights in)"),
        Metric("style_score", "markers/100 words", "higher", "request", "marker words of the adapter's own style in its output"),
        Metric("multistream_speedup", "x", "higher", "request", "time of K sequential single-stream runs / one K-stream run, same prompt and adapters", "K sequential runs"),
        Metric("tokens_per_step", "tokens", "higher", "request", "DS2D: generated tokens per model forward"),
        Metric("acceptance_rate", "ratio", "higher", "request", "DS2D: accepted draft tokens / depth of the verified draft trees"),
        Metric("plain_step_share", "ratio", "lower", "request", "DS2D: share of decode steps run without a draft"),
        Metric("draft_ms", "ms", "lower", "request", "DS2D: time spent drafting per request"),
        Metric("verify_ms", "ms", "lower", "request", "DS2D: time spent in verification forwards per request"),
        Metric("ds2d_speedup", "x", "higher", "request", "DS2D decode tokens/s / plain greedy decode tokens/s on the same prompt, paired in the same runner process", "greedy, same process"),
        Metric("matches_greedy", "ratio", "higher", "request", "DS2D: 1 if the output's tokens equal plain greedy decoding's on the same engine, else 0", "greedy, same process"),
        # aihub target: from AI Hub's profile and inference jobs (harness/targets/aihub.py)
        Metric("prefill_chunk_ms", "ms", "lower", "process", "profiled time of one prefill graph call (a chunk of prompt tokens)"),
        Metric("decode_step_ms", "ms", "lower", "process", "profiled time of one decode graph call (one token)"),
        Metric("ttft_ms_derived", "ms", "lower", "request", "derived: prompt chunks x median prefill_chunk_ms"),
        Metric("decode_tokens_per_s_derived", "tokens/s", "higher", "request", "derived: 1000 / median decode_step_ms"),
        Metric("first_load_ms", "ms", "lower", "process", "profiled first (cold) load of both graphs"),
        Metric("warm_load_ms", "ms", "lower", "process", "profiled warm load of both graphs"),
        Metric("peak_memory_low_bytes", "bytes", "lower", "process", "low end of the profiled inference peak memory range (larger graph)"),
        Metric("peak_memory_high_bytes", "bytes", "lower", "process", "high end of the profiled inference peak memory range (larger graph)"),
        Metric("npu_ops", "ops", "higher", "process", "layers of both graphs the profile places on the NPU"),
        Metric("gpu_ops", "ops", "lower", "process", "layers of both graphs the profile places on the GPU"),
        Metric("cpu_ops", "ops", "lower", "process", "layers of both graphs the profile places on the CPU"),
        Metric("top1_agreement_host", "ratio", "higher", "request", "device logits' argmax equal to the host engine's, per position (last prefill chunk + first decode step)"),
        Metric("max_abs_logit_diff_host", "logits", "lower", "request", "largest |device logit - host engine logit| over the same positions"),
        *(Metric(f"acceptance_depth_{d}", "ratio", "higher", "request", f"DS2D: share of draft steps whose accepted path reached depth {d}")
          for d in range(1, 9)),
    )
}

# Technique counters the runner reports in a sample's "stats", stored under the same names.
STATS_METRICS = ("adapter_switch_ms", "multistream_speedup", "tokens_per_step", "acceptance_rate",
                 "plain_step_share", "draft_ms", "verify_ms", "ds2d_speedup", "matches_greedy")


def metric(name: str) -> Metric:
    return METRICS[name]
