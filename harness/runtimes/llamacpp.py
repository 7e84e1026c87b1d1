"""llama.cpp's tools: what they serve, how they are called, and reading what they print.

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

What it serves (`problem`) and how (`command`): one stream greedy with llama-completion,
K streams with llama-batched (the prompt decoded once for all K: prefill "shared"), and
draft-free self-speculation with llama-lookahead and llama-lookup; greedy everywhere
(`--temp 0`). Precision is the GGUF type (`GGUF_TYPES`, made by `harness.runtimes.models`).
LoRA adapters are applied with `--lora` at load, one tool process per request and adapter:
its adapters are context-wide, so one batch cannot mix them, and switching is a new process.
"""

from __future__ import annotations

import re

from harness.runtimes.report import ToolOutputError, ToolReport, counters, rate
from harness.spec.variant import Variant

TOOLS = ("completion", "simple", "batched", "lookahead", "lookup")
DECODING_TOOLS = {"greedy": "completion", "lookahead": "lookahead", "lookup": "lookup"}  # one stream
GGUF_TYPES = {"fp32": "F32", "fp16": "F16", "int4": "Q4_1"}  # Q4_1: the packaged file itself
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # lookup and lookahead colour drafted tokens with --color
_END_OF_TEXT = " [end of text]\n"  # llama-completion, at an end-of-generation token
_LOG_PREFIX = r"(?:\d+\.\d+\.\d+\.\d+ [A-Z] )?"
_TIMING = re.compile(r"^" + _LOG_PREFIX + r"\w*:\s+(?P<what>load|prompt eval|eval|total) time =\s*(?P<ms>[\d.]+) ms"
                     r"(?: /\s*(?P<count>\d+) (?P<unit>tokens|runs))?", re.M)
# not anchored: llama-batched's "stream N finished" lines end without a newline
_DECODED = re.compile(r"(?:\w+: )?(?P<what>encoded|decoded)\s+(?P<n>\d+) tokens in\s+(?P<s>[\d.]+) s"
                      r"(?:econds)?, speed:\s*(?P<speed>[\d.]+) t/s", re.M)
_STAT = re.compile(r"^" + _LOG_PREFIX + r"(?P<name>n_draft|n_predict|n_drafted|n_accept)\s*=\s*(?P<n>\d+)\s*$", re.M)
_VERSION = re.compile(r"^version: (.+)$", re.M)


def problem(variant: Variant) -> str | None:
    """Why llama.cpp's tools cannot serve `variant`, or None."""
    if variant.streams == 1 and variant.decoding not in DECODING_TOOLS:
        return f"no decoding {variant.decoding!r}; its tools serve {', '.join(DECODING_TOOLS)}"
    if variant.graph != "eager":
        return "graph 'compiled' is the reference engine's torch.compile; llama.cpp runs its own graph"
    if variant.streams > 1 and variant.adapters:
        return ("cannot give the sequences of one batch different LoRA adapters "
                "(its adapters are set per context: llama_set_adapters_lora)")
    if variant.streams > 1 and variant.decoding != "greedy":
        return f"decodes K streams greedily (llama-batched); decoding {variant.decoding!r} runs one stream"
    if variant.streams > 1 and variant.prefill != "shared":
        return "decodes the prompt once for all K streams (llama-batched): prefill 'shared'"
    if variant.lora_mode != "runtime":
        return "applies adapters with --lora, beside the weights (lora_mode 'runtime'); merged weights are not built"
    return None


def prompt_problem(variant: Variant, template: str) -> str | None:
    """Why a prompt of this template cannot go to the variant's tool, or None."""
    if variant.streams > 1 and template != "raw":
        return ("llama-batched reads special tokens in its prompt as text (common_tokenize without "
                "parse_special), so it cannot be given the chat template: it takes raw prompts only")
    return None


def tool(variant: Variant) -> str:
    return "batched" if variant.streams > 1 else DECODING_TOOLS[variant.decoding]


def command(variant: Variant, model: str, prompt: str, prompt_tokens: int, max_new_tokens: int, context: int,
            threads: int | None, lora: str | None = None) -> list[str]:
    """The tool's argv (its binary's name first) for one greedy request of `max_new_tokens` tokens;
    `context`: the KV cache's tokens (llama-batched sizes its own, lookahead needs its default);
    `lora`: an adapter's GGUF, applied at load beside the weights."""
    name = tool(variant)
    argv = [f"llama-{name}", "-m", model, "-p", prompt, "--temp", "0", "-s", "0"]
    if lora:
        argv += ["--lora", lora]
    if name == "batched":  # -n counts the prompt; -kvu: the K sequences share one KV buffer;
        # -lv 4: this tool prints libllama's perf lines (its load time) only at that verbosity
        argv += ["-np", str(variant.streams), "-n", str(prompt_tokens + max_new_tokens), "-kvu", "-lv", "4"]
    else:
        argv += ["-n", str(max_new_tokens)]
    if name in ("completion", "lookup"):
        argv += ["-c", str(context)]
    if name == "completion":
        argv += ["-no-cnv", "--no-display-prompt"]
    return argv + (["-t", str(threads)] if threads else [])


def parse(tool: str, stdout: str, stderr: str, prompt: str = "", end_token: str = "") -> ToolReport:
    """One run of llama-`tool` (TOOLS) -> its numbers, counters and texts. `prompt`: the prompt
    as given, which llama-batched, -lookahead and -lookup print before the generated text;
    `end_token`: the end-of-sequence token's text, which lookahead and lookup print."""
    if tool not in TOOLS:
        raise ValueError(f"unknown llama.cpp tool {tool!r}; known: {', '.join(TOOLS)}")
    fields = _fields(stderr)
    if "eval time ms" not in fields and "decoded tokens" not in fields:
        raise ToolOutputError(f"llama-{tool}", "timing lines", stderr)
    values, sources = _counters(tool, fields)
    texts = _texts(tool, _ANSI.sub("", stdout), prompt)
    if tool == "completion" and texts[0].endswith(_END_OF_TEXT):
        texts, fields["end of text"] = [texts[0].removesuffix(_END_OF_TEXT)], 1.0
    elif tool in ("lookahead", "lookup") and end_token and end_token in texts[0]:  # accepted drafts may follow it
        texts, fields["end of text"] = [texts[0][:texts[0].index(end_token)]], 1.0
    return ToolReport(tool=f"llama-{tool}", fields=fields, counters=values, sources=sources, texts=texts)


def _texts(tool: str, stdout: str, prompt: str) -> list[str]:
    """The generated texts: stdout after the prompt, without the tool's closing blank lines."""
    if tool == "batched":  # "sequence N:\n\n" PROMPT TEXT "\n\n", one after another
        blocks = re.split(r"^sequence \d+:\n\n", stdout, flags=re.M)[1:]
        return [block.removeprefix(prompt).removesuffix("\n").removesuffix("\n\n") for block in blocks]
    if tool in ("lookahead", "lookup"):  # "\n\n" PROMPT TEXT "\n\n", and "\n\n" again at exit
        return [stdout.removeprefix("\n\n").removeprefix(prompt).removesuffix("\n\n\n\n")]
    return [stdout.removesuffix("\n\n")]


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
    found = {"load_ms": (fields.get("load time ms"), "load time")}
    if tool == "batched":  # libllama counts every batch of more than one token as prompt eval: K streams' steps too
        found["batch_decode_tokens_per_s"] = (fields.get("decoded t/s"), "decoded ... speed (all K streams)")
        return counters(found, f"llama-{tool}")
    found["prefill_tokens_per_s"] = (rate(fields.get("prompt eval tokens", 0), fields.get("prompt eval time ms", 0)),
                                     "prompt eval tokens / prompt eval time")
    if tool in ("completion", "simple"):  # one token per decode call
        found["decode_tokens_per_s"] = (rate(fields.get("eval runs", 0), fields.get("eval time ms", 0)),
                                        "eval runs / eval time")
    else:  # lookahead, lookup: several tokens per call, the tool's own count
        found["decode_tokens_per_s"] = (fields.get("decoded t/s"), "decoded ... speed")
        found["accepted_tokens"] = (fields.get("n_accept"), "n_accept")
        found["drafted_tokens"] = (fields.get("n_drafted"), "n_drafted")
    return counters(found, f"llama-{tool}")


# llama-perplexity --kl-divergence (tools/perplexity/perplexity.cpp, kl_divergence()): its summary
_KL_LINES = {
    "kld_mean": re.compile(r"^Mean\s+KLD:\s*(?P<v>-?[\d.]+)\s*±\s*(?P<se>-?nan|[\d.]+)", re.M),
    "kld_p99": re.compile(r"^99\.0%\s+KLD:\s*(?P<v>-?[\d.]+)", re.M),
    "same_top_p": re.compile(r"^Same top p:\s*(?P<v>[\d.]+)\s*±\s*(?P<se>-?nan|[\d.]+)\s*%", re.M),
    "ppl_ratio": re.compile(r"^Mean PPL\(Q\)/PPL\(base\)\s*:\s*(?P<v>[\d.]+)\s*±\s*(?P<se>-?nan|[\d.]+)", re.M),
}
_KL_CHUNKS = re.compile(r"computing over (?P<chunks>\d+) chunks, n_ctx=(?P<ctx>\d+)")
KL_CONTEXT = 64  # tokens per chunk: the first half is context, the other 31 are scored
# it prints no statistics below 100 scored positions ("we do not wish to do statistics on so few values")
KL_MIN_TOKENS = 4 * KL_CONTEXT


def perplexity_commands(base_model: str, model: str, text: str, logits: str, threads: int | None) -> list[list[str]]:
    """llama-perplexity's two runs of --kl-divergence: `base_model` saves its log-probs of every
    scored token of `text` to `logits`, then `model` is scored against them."""
    thread_args = ["-t", str(threads)] if threads else []
    common = ["-c", str(KL_CONTEXT), "-b", str(KL_CONTEXT), "--kl-divergence-base", logits, *thread_args]
    return [["llama-perplexity", "-m", base_model, "-f", text, *common],
            ["llama-perplexity", "-m", model, "--kl-divergence", *common]]


def parse_kl_divergence(output: str) -> dict[str, float]:
    """llama-perplexity --kl-divergence's summary: mean KLD and its standard error, the 99th
    percentile, the share of positions with the same top token (a fraction) and its standard
    error, the mean PPL(Q)/PPL(base) and its standard error, and the positions scored. The tool
    prints "nan" for an error of a model against itself (every position equal: 0/0); that error
    is left out, not guessed."""
    found: dict[str, float] = {}
    for name, pattern in _KL_LINES.items():
        m = pattern.search(output)
        if m is None:
            raise ToolOutputError("llama-perplexity", f"{name} line", output)
        scale = 0.01 if name == "same_top_p" else 1.0  # printed in %
        found[name] = float(m["v"]) * scale
        if m.groupdict().get("se") is not None and "nan" not in m["se"]:
            found[f"{name}_se"] = float(m["se"]) * scale
    chunks = _KL_CHUNKS.search(output)
    if chunks:
        ctx = int(chunks["ctx"])
        found["positions"] = float(int(chunks["chunks"]) * (ctx - 1 - ctx // 2))
    return found
