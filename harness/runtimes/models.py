"""The GGUF files llama.cpp runs, made once from what we ship and cached beside the build.

The package holds one model file, Q4_1 linears with a Q8_0 embedding: `int4` runs it as it
is (the reference engine's int4 repacks exactly those blocks). `fp16` and `fp32` are that
file dequantized by the host build's `llama-quantize --allow-requantize` (what the
reference engine's fp16 and fp32 load too).

LoRA adapters (our PEFT folders) are converted by the tree's own `convert_lora_to_gguf.py`,
which reads the base model's Hugging Face config: written here from the GGUF's own
hyperparameters (the package has no config.json), never fetched.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from harness.engine.gguf_file import model_path, read_gguf
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
        _run([str(host_tools / "llama-quantize"), "--allow-requantize", str(source), str(partial), kind],
             f"llama-quantize {source.name} -> {kind}")
        partial.replace(target)
    return target


def lora_file(model: str, adapter: Path, host_tools: Path) -> Path:
    """The PEFT adapter folder `adapter` as a llama.cpp LoRA GGUF (f32), named by its content."""
    digest = hashlib.sha256(b"".join((adapter / name).read_bytes()
                                     for name in ("adapter_config.json", "adapter_model.safetensors")))
    target = host_tools.parent / "loras" / f"{adapter.name}-{digest.hexdigest()[:12]}.gguf"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        base = _hf_config(model, host_tools.parent / "loras" / "base")
        converter = host_tools.parent / "convert"
        partial = target.with_suffix(".partial")
        _run([sys.executable, str(converter / "convert_lora_to_gguf.py"), str(adapter), "--base", str(base),
              "--outfile", str(partial), "--outtype", "f32"], f"convert_lora_to_gguf.py {adapter.name}",
             {**os.environ, "PYTHONPATH": str(converter / "gguf-py"), "HF_HUB_OFFLINE": "1"})
        partial.replace(target)
    return target


def _hf_config(model: str, folder: Path) -> Path:
    """A config.json for `model` from its GGUF's hyperparameters: all the converter reads."""
    gguf = read_gguf(model_path(model))
    meta = gguf.metadata
    if meta["general.architecture"] != "llama":
        raise RuntimeError(f"{model}: architecture {meta['general.architecture']!r}; the LoRA conversion knows llama")
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": meta["llama.embedding_length"], "intermediate_size": meta["llama.feed_forward_length"],
        "num_attention_heads": meta["llama.attention.head_count"],
        "num_key_value_heads": meta["llama.attention.head_count_kv"],
        "num_hidden_layers": meta["llama.block_count"], "rms_norm_eps": meta["llama.attention.layer_norm_rms_epsilon"],
        "rope_theta": meta["llama.rope.freq_base"], "vocab_size": meta["llama.vocab_size"],
        "max_position_embeddings": meta["llama.context_length"],
        "tie_word_embeddings": all(t.name != "output.weight" for t in gguf.tensors),  # no head of its own
        "bos_token_id": meta["tokenizer.ggml.bos_token_id"], "eos_token_id": meta["tokenizer.ggml.eos_token_id"],
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return folder


def _run(argv: list[str], what: str, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{what} failed (exit {result.returncode}):\n{tail}")
