"""llama.cpp's tools: reading what they print.

Text goes to stdout, logs and timings to stderr (`common/log.cpp`). The timing lines have
had three prefixes over the versions, `llama_print_timings:`, `llama_perf_context_print:`
and now `common_perf_print:` (with sampling and unaccounted lines), each optionally after
the log prefix `M.SS.mmm.uuu I ` that `common_init()` turns on:

    common_perf_print:        load time =     971.88 ms
    common_perf_print: prompt eval time =     170.42 ms /     9 tokens (...)
    common_perf_print:        eval time =   76130.10 ms /  1156 runs   (...)
    common_perf_print:       total time =   76849.02 ms /  1165 tokens

`eval` counts decode calls ("runs"), one token each for llama-completion and llama-simple;
llama-lookahead and llama-lookup verify several tokens per call and print their own
`decoded N tokens in S seconds` line and draft statistics. llama.cpp prints no time to
first token and no process memory (the target measures memory).
"""

from __future__ import annotations

import re

from harness.runtimes.report import ToolOutputError, ToolReport, counters, rate

TOOLS = ("completion", "simple", "batched", "lookahead", "lookup")
_LOG_PREFIX = r"(?:\d+\.\d+\.\d+\.\d+ [A-Z] )?"
_TIMING = re.compile(r"^" + _LOG_PREFIX + r"\w*:\s+(?P<what>load|prompt eval|eval|total) time =\s*(?P<ms>[\d.]+) ms"
                     r"(?: /\s*(?P<count>\d+) (?P<unit>tokens|runs))?", re.M)
_DECODED = re.compile(r"^" + _LOG_PREFIX + r"(?:\w+: )?(?P<what>encoded|decoded)\s+(?P<n>\d+) tokens in\s+(?P<s>[\d.]+) s"
                      r"(?:econds)?, speed:\s*(?P<speed>[\d.]+) t/s", re.M)
_STAT = re.compile(r"^" + _LOG_PREFIX + r"(?P<name>n_draft|n_predict|n_drafted|n_accept)\s*=\s*(?P<n>\d+)\s*$", re.M)
_VERSION = re.compile(r"^version: (.+)$", re.M)
_SEQUENCE = re.compile(r"^sequence (\d+):\n\n(.*?)\n\n", re.M | re.S)


def parse(tool: str, stdout: str, stderr: str) -> ToolReport:
    """One run of llama-`tool` (TOOLS) -> its numbers, counters and texts."""
    if tool not in TOOLS:
        raise ValueError(f"unknown llama.cpp tool {tool!r}; known: {', '.join(TOOLS)}")
    fields = _fields(stderr)
    if "eval time ms" not in fields and "decoded tokens" not in fields:
        raise ToolOutputError(f"llama-{tool}", "timing lines", stderr)
    values, sources = _counters(tool, fields)
    return ToolReport(
        tool=f"llama-{tool}", fields=fields, counters=values, sources=sources,
        texts=[text for _, text in _SEQUENCE.findall(stdout)] if tool == "batched" else [stdout],
    )


def version(output: str) -> str | None:
    """What `llama-TOOL --version` prints (to stderr): 'version: 0.5.0-dev (build 1, commit 0c1e570)'."""
    m = _VERSION.search(output)
    return m[1].strip() if m else None


def _fields(stderr: str) -> dict[str, float]:
    fields: dict[str, float] = {}
    for m in _TIMING.finditer(stderr):  # `total time` can be printed twice: the first one counts
        fields.setdefault(f"{m['what']} time ms", float(m["ms"]))
        if m["count"]:
            fields.setdefault(f"{m['what']} {m['unit']}", float(m["count"]))
    for m in _DECODED.finditer(stderr):
        fields.setdefault(f"{m['what']} tokens", float(m["n"]))
        fields.setdefault(f"{m['what']} s", float(m["s"]))
        fields.setdefault(f"{m['what']} t/s", float(m["speed"]))
    for m in _STAT.finditer(stderr):
        fields.setdefault(m["name"], float(m["n"]))
    return fields


def _counters(tool: str, fields: dict[str, float]) -> tuple[dict[str, float], dict[str, str]]:
    found = {
        "load_ms": (fields.get("load time ms"), "load time"),
        "prefill_tokens_per_s": (rate(fields.get("prompt eval tokens", 0), fields.get("prompt eval time ms", 0)),
                                 "prompt eval tokens / prompt eval time"),
    }
    if tool in ("completion", "simple"):  # one token per decode call
        found["decode_tokens_per_s"] = (rate(fields.get("eval runs", 0), fields.get("eval time ms", 0)),
                                        "eval runs / eval time")
    elif tool in ("lookahead", "lookup"):  # several tokens per call: the tool's own count
        found["decode_tokens_per_s"] = (fields.get("decoded t/s"), "decoded ... speed")
    return counters(found, f"llama-{tool}")
