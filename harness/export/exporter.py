"""ONNX export of a variant: a prefill graph and a decode graph, checked and cached.

`export_variant` builds both graphs (harness/export/graph.py) from the variant's
weights, checks each against the PyTorch engine with onnxruntime on the host, and
caches the pair by a content hash of everything that determines it: the GGUF file,
precision, shapes, the adapter bank's shape (not its values: the bank is an input, so
one export serves every adapter of that shape) and the exporter's source.

INT4 is quantization in the graph (blocked uint4 DequantizeLinear holding the GGUF's own
Q4_1 codes), not AI Hub's quantize job: the file is already 4-bit, so requantizing it
from a float export would add a second rounding (harness/engine/int4.py measured that
as ~100x the KL) and need calibration data, while the codes carry over exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from harness.engine import Engine
from harness.engine.gguf_file import dequantized, model_path, named_tensors, q4_1_blocks, read_gguf
from harness.engine.lora import AdapterBank
from harness.export import feeds, graph
from harness.export.graph import GraphSpec, Int4Linear, Int8Rows, Weights
from harness.export.onnx_session import exact_session_options

# Largest |logit difference| against the engine at the same precision that an export may
# show. The engine itself is not exact: fp16 rounds activations to fp16 where the graph
# keeps float32; int4 rounds Q4_1's scales and offsets and every activation to bf16 where
# the graph uses the file's values and float32 (against the fp32 engine, which holds the
# same dequantized Q4_1 linears, the int4 graph differs by at most 0.70, the int4 engine by
# 0.90). Measured on the check prompt, prefill / decode: fp16 0.14 / 0.03, int4 0.86 / 0.23;
# the bounds leave about 2x room.
TOLERANCE = {"fp16": 0.3, "int4": 1.5}
CHECK_PROMPT = "The capital of France is"


class ExportError(Exception):
    """An export does not reproduce the engine within TOLERANCE."""


@dataclass(frozen=True)
class Export:
    prefill: Path
    decode: Path
    prefill_spec: GraphSpec
    decode_spec: GraphSpec
    digest: str
    check: dict  # graph -> {"top1_agreement", "max_abs_logit_diff", "tolerance"}


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "hil-harness" / "onnx"


def export_variant(engine: Engine, model: str, precision: str, bank: AdapterBank, chunk: int,
                   context: int) -> Export:
    """The variant's two graphs, from the cache or built and checked now."""
    if precision not in TOLERANCE:
        raise ExportError(f"precision {precision!r} has no ONNX export; exported: {', '.join(TOLERANCE)}")
    slots, rank, modules = feeds.lora_shape(bank)
    prefill = GraphSpec(chunk, context, slots, rank, modules)
    decode = GraphSpec(1, context, slots, rank, modules)
    digest = _digest(model, precision, prefill, decode)
    folder = cache_root() / digest
    if not (folder / "check.json").is_file():
        _build(engine, model, precision, bank, prefill, decode, folder)
    check = json.loads((folder / "check.json").read_text())
    return Export(folder / "prefill.onnx", folder / "decode.onnx", prefill, decode, digest, check)


def _digest(model: str, precision: str, prefill: GraphSpec, decode: GraphSpec) -> str:
    h = hashlib.sha256()
    with open(model_path(model), "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            h.update(block)
    for source in (graph.__file__, __file__):  # the exporter's source: the graph and how its weights are read
        h.update(Path(source).read_bytes())
    h.update(json.dumps([precision, asdict(prefill), asdict(decode), onnx.__version__]).encode())
    return h.hexdigest()[:24]


def _build(engine: Engine, model: str, precision: str, bank: AdapterBank, prefill: GraphSpec, decode: GraphSpec,
           folder: Path) -> None:
    weights = load_weights(model, precision)
    config = engine.model.config
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="export-", dir=folder.parent))  # same file system: rename is atomic
    try:
        for name, spec in (("prefill", prefill), ("decode", decode)):
            onnx.save(graph.build(config, weights, spec, f"{model}-{precision}-{name}"), tmp / f"{name}.onnx")
        del weights
        check = _check(engine, precision, bank, tmp, prefill, decode)
        (tmp / "check.json").write_text(json.dumps(check, indent=1))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_weights(model: str, precision: str) -> Weights:
    """The variant's weights as the graph holds them, straight from the GGUF file."""
    from harness.engine import int4

    tensors: dict = {}
    for name, tensor in named_tensors(read_gguf(model_path(model))):
        if precision == "int4" and name == "tok_embeddings.weight":
            codes, scales = int4.embedding_weights(tensor)
            tensors[name] = Int8Rows(codes.numpy(), scales.float().numpy())
        elif precision == "int4" and name.endswith(".weight") and tensor.tensor_type.name == "Q4_1":
            d, m, q = q4_1_blocks(tensor)
            tensors[name] = Int4Linear(q.numpy(), d.numpy(), m.numpy())
        elif name.endswith("norm.weight"):
            tensors[name] = dequantized(tensor).astype(np.float32)
        else:
            tensors[name] = dequantized(tensor).astype(np.float16)
    return Weights(tensors)


def _check(engine: Engine, precision: str, bank: AdapterBank, folder: Path, prefill: GraphSpec,
           decode: GraphSpec) -> dict:
    """Run both graphs with onnxruntime on the check prompt (through the first adapter, if any)."""
    import onnxruntime as ort

    ids = engine.tokenizer.encode(CHECK_PROMPT)
    adapter = bank.names[0] if bank.slots else None
    cases = dict(zip(("prefill", "decode"), feeds.cases(engine, ids, bank, adapter, prefill, decode)))
    check = {}
    for name, case in cases.items():
        session = ort.InferenceSession(str(folder / f"{name}.onnx"), exact_session_options(),
                                       providers=["CPUExecutionProvider"])
        logits = session.run(["logits"], case.inputs)[0]
        agreement, diff = feeds.compare(logits, case)
        check[name] = {"top1_agreement": agreement, "max_abs_logit_diff": diff, "tolerance": TOLERANCE[precision]}
        if diff > TOLERANCE[precision]:
            raise ExportError(f"{precision} {name} graph: max |logit difference| to the engine {diff:.3g} "
                              f"exceeds {TOLERANCE[precision]}")
    return check
