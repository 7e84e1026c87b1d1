"""Qualcomm Genie's `genie-t2t-run`: reading what it prints to stdout.

    Using libGenie.so version 1.1.0
    [PROMPT]: <the prompt>
    [BEGIN]: <the generated text, possibly over several lines>[END]

libGenie 1.0.0 also printed `Prompt processing: N us` and `Token generation: N us, R
tokens/s` after `[END]`; they are kept as fields. Which tokens those lines count is not
documented, so they give no counter: Genie's counters come from its `--profile` JSON.
"""

from __future__ import annotations

import re

from harness.runtimes.report import ToolOutputError, ToolReport
from harness.spec.variant import Variant

DIALOGS = {"greedy": "basic", "ssd": "ssd-q1"}  # one stream; K streams: the "multistream" dialog

_VERSION = re.compile(r"^Using libGenie\.so version (\S+)", re.M)
_TEXT = re.compile(r"^\[BEGIN\]: (.*?)\[END\]", re.M | re.S)
_KPI = re.compile(r"^(?P<name>Prompt processing|Token generation): (?P<us>\d+) us(?:, (?P<rate>[\d.]+) tokens/s)?",
                  re.M)


def problem(variant: Variant) -> str | None:
    """Why a Genie dialog cannot serve `variant`, or None. Genie runs the user's QNN context
    binaries: their precision is what they were compiled with (fp16 or int4, not fp32)."""
    if variant.decoding not in DIALOGS:
        return f"no decoding {variant.decoding!r}; its dialogs serve {', '.join(DIALOGS)} (ssd: ssd-q1)"
    if variant.streams > 1 and variant.decoding != "greedy":
        return f"its multistream dialog decodes greedily; decoding {variant.decoding!r} runs one stream"
    if variant.streams > 1 and variant.adapters:
        return "switches LoRA adapters per dialog (-l), not per stream of a multistream dialog"
    if variant.precision == "fp32":
        return "runs QNN context binaries compiled for fp16 or int4, not fp32"
    if variant.lora_mode != "runtime" or variant.graph != "eager":
        return "serves lora_mode 'runtime' and graph 'eager' (its graph is the compiled context binary)"
    return None


def parse(stdout: str, stderr: str) -> ToolReport:
    text = _TEXT.search(stdout)
    if not text:
        raise ToolOutputError("genie-t2t-run", "[BEGIN]: ... [END] text", stderr)
    fields: dict[str, float] = {}
    for m in _KPI.finditer(stdout):
        fields[f"{m['name'].lower()} us"] = float(m["us"])
        if m["rate"]:
            fields[f"{m['name'].lower()} tokens/s"] = float(m["rate"])
    version = _VERSION.search(stdout)
    return ToolReport(tool="genie-t2t-run", fields=fields, texts=[text[1]], version=version[1] if version else None)
