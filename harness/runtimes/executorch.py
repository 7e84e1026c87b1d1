"""ExecuTorch's `llama_main` (and the Qualcomm `qnn_llama_runner`): how it is called, and reading what it prints.

After generating, the runner prints one stats line to stdout (`extension/llm/runner/
stats.h`, `print_report`):

    PyTorchObserver {"prompt_tokens":14,"generated_tokens":54,"model_load_start_ms":...,
    "model_load_end_ms":...,"inference_start_ms":...,"inference_end_ms":...,
    "prompt_eval_end_ms":...,"first_token_ms":...,"aggregate_sampling_time_ms":19,
    "SCALING_FACTOR_UNITS_PER_SECOND":1000}

Newer versions add `prefill_token_per_sec` and `decode_token_per_sec` first. Timestamps
are in units of 1/SCALING_FACTOR s. `first_token_ms` is set right after prefill, and
`generated_tokens` leaves out the token prefill produced (`text_llm_runner.cpp`), so the
counters below are the registry's definitions exactly. A load time of 0 to 0 (runners
that do not time the load) gives no `load_ms`.
"""

from __future__ import annotations

import json
import re

from harness.runtimes.report import ToolOutputError, ToolReport, counters, rate
from harness.spec.variant import Variant

_OBSERVER = re.compile(r"^PyTorchObserver (\{.*\})\s*$", re.M)


def problem(variant: Variant) -> str | None:
    """Why llama_main cannot serve `variant`, or None: it runs one exported .pte, one stream, greedy."""
    if variant.streams > 1 or variant.decoding != "greedy" or variant.adapters:
        return "runs one stream, greedy, without adapters (one exported .pte program)"
    if variant.lora_mode != "runtime" or variant.graph != "eager":
        return "serves lora_mode 'runtime' and graph 'eager' (its graph is the exported program)"
    return None


def command(pte: str, tokenizer: str, prompt: str, max_new_tokens: int) -> list[str]:
    """llama_main's argv (gflags) for one greedy request of `max_new_tokens` tokens."""
    return ["executorch/llama_main", f"--model_path={pte}", f"--tokenizer_path={tokenizer}", f"--prompt={prompt}",
            f"--max_new_tokens={max_new_tokens}", "--temperature=0"]


def parse(stdout: str, stderr: str, prompt: str = "", end_token: str = "") -> ToolReport:
    """One run -> its counters and text: what it printed after echoing the `prompt` (log lines
    may come first), up to the stats line, without the end token it prints."""
    m = _OBSERVER.search(stdout)
    try:
        stats = json.loads(m[1]) if m else None
    except json.JSONDecodeError:
        stats = None
    if not isinstance(stats, dict) or not {"inference_start_ms", "first_token_ms", "inference_end_ms"} <= set(stats):
        raise ToolOutputError("llama_main", "PyTorchObserver stats line", stderr)
    ms = 1e3 / stats.get("SCALING_FACTOR_UNITS_PER_SECOND", 1000)  # ms per stats unit
    fields = {key: float(value) for key, value in stats.items() if isinstance(value, (int, float))}
    start, first, end = (fields[k] * ms for k in ("inference_start_ms", "first_token_ms", "inference_end_ms"))
    load = (fields.get("model_load_end_ms", 0) - fields.get("model_load_start_ms", 0)) * ms
    found = {
        "load_ms": (load if load > 0 else None, "model_load_end_ms - model_load_start_ms"),
        "ttft_ms": (first - start, "first_token_ms - inference_start_ms"),
        "prefill_tokens_per_s": (rate(fields.get("prompt_tokens", 0), first - start),
                                 "prompt_tokens / (first_token_ms - inference_start_ms)"),
        "decode_tokens_per_s": (rate(fields.get("generated_tokens", 0), end - first),
                                "generated_tokens / (inference_end_ms - first_token_ms)"),
        "e2e_ms": (end - start, "inference_end_ms - inference_start_ms"),
    }
    values, sources = counters(found, "llama_main PyTorchObserver")
    printed = stdout[:m.start()]
    text = printed[printed.find(prompt) + len(prompt):] if prompt and prompt in printed else printed
    text = text.rstrip("\n")
    if end_token and text.endswith(end_token):
        text, fields["end of text"] = text.removesuffix(end_token), 1.0
    return ToolReport(tool="llama_main", fields=fields, counters=values, sources=sources, texts=[text])
