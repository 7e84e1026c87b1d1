"""What the reference engine (harness/engine, run by harness/run/runner.py) can serve."""

from __future__ import annotations
from harness.spec.variant import Variant

DECODINGS = ("greedy", "ds2d")


def problem(variant: Variant) -> str | None:
    if variant.decoding not in DECODINGS:
        return f"no decoding {variant.decoding!r}; it serves {', '.join(DECODINGS)}"
    if variant.streams > 1 and variant.decoding != "greedy":
        return f"decoding {variant.decoding!r} runs one stream; multi-stream decoding is greedy"
    if variant.lora_mode == "merged" and variant.precision == "int4":
        return "lora_mode 'merged' needs fp32 or fp16 weights (merging into int4 would requantize)"
    if variant.adapters and variant.decoding != "greedy":
        return f"decoding {variant.decoding!r} with adapters is not supported yet; supported: greedy"
    if variant.graph == "compiled" and (variant.streams > 1 or variant.decoding != "greedy" or variant.adapters):
        return ("graph 'compiled' is not supported yet with streams, DS2D or adapters; "
                "supported: one stream, greedy, no adapters")
    return None
