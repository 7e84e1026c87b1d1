"""The GGUF file a precision runs on llama.cpp, made once from the packaged model.

The package holds one file, Q4_1 linears with a Q8_0 embedding: `int4` runs it as it is
(the reference engine's int4 repacks exactly those blocks). `fp16` and `fp32` are that
file dequantized by the host build's `llama-quantize --allow-requantize` (what the
reference engine's fp16 and fp32 load too), cached beside the build.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from harness.engine.gguf_file import model_path
from harness.runtimes.llamacpp import GGUF_TYPES


def gguf_file(model: str, precision: str, host_tools: Path) -> Path:
    """The model at `precision` as GGUF; `host_tools`: the host build's folder (with llama-quantize)."""
    source = model_path(model)
    kind = GGUF_TYPES[precision]
    if source.suffixes[-2:] == [f".{kind}", ".gguf"]:
        return source
    target = host_tools.parent / "models" / f"{source.name.split('.')[0]}.{kind}.gguf"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        result = subprocess.run([str(host_tools / "llama-quantize"), "--allow-requantize", str(source), str(partial),
                                 kind], capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-5:])
            raise RuntimeError(f"llama-quantize {source.name} -> {kind} failed (exit {result.returncode}):\n{tail}")
        partial.replace(target)
    return target
