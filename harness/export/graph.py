"""The reference model as a fixed-shape ONNX graph, built node by node from its weights.

Built the way onnxruntime-genai's model builder builds LLM graphs (from the weights,
not by tracing), so every shape is fixed and every input is explicit:

    inputs   input_ids [1, T] int32, position_ids [T] int32, adapter_index [1] int32,
             past_key_{l}, past_value_{l} [1, H_kv, C, D] float16 (the KV cache, C slots),
             lora_a_{m} [L, S, d_in, r], lora_b_{m} [L, S, r, d_out] float16 (the adapter bank,
             slot 0 zeros = base, scale folded into B; only for variants with adapters)
    outputs  logits [1, T, vocab] float32, present_key_{l}, present_value_{l} (the cache with
             the T new positions written at position_ids)

T is the prefill chunk (the prompt processor) or 1 (the token generator), as Qualcomm's
LLM exports split them. Slot j of the cache may be attended by token t iff j <= position t,
so padding past the prompt is harmless: it is overwritten before it is ever attended.
Activations are float32; the KV cache and the bank cross the graph boundary as float16.

Weights: "fp16" holds the dequantized GGUF weights as float16 initializers. "int4" keeps
the GGUF's Q4_1 codes as uint4 with blocked DequantizeLinear (opset 21, 32 weights a
block, scale d); Q4_1's per-block offset m is applied as (block sums of x) @ m, so
x @ (d q + m)^T is exact without re-quantizing. Its tied embedding / LM head is the
engine's int8 rows with one scale per row (harness/engine/int4.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from harness.engine.model import ModelConfig, precompute_freqs_cis

OPSET = 21
INT4_BLOCK = 32
LORA_MODULES = {  # engine Linear name inside a block -> input suffix
    "attention.wq": "wq", "attention.wk": "wk", "attention.wv": "wv", "attention.wo": "wo",
    "feed_forward.w1": "w1", "feed_forward.w2": "w2", "feed_forward.w3": "w3",
}
MASKED = -1e9  # added to scores of slots a token may not attend


@dataclass(frozen=True)
class GraphSpec:
    """The fixed shapes of one graph."""

    tokens: int  # T: tokens per call
    context: int  # C: KV cache slots
    slots: int = 0  # S: adapter bank slots (adapters + 1); 0 = no adapter inputs
    rank: int = 0  # r of the bank
    lora_modules: tuple[str, ...] = ()  # LORA_MODULES keys present in the bank


@dataclass
class Int4Linear:
    q: np.ndarray  # [N, K] uint8 in 0..15
    d: np.ndarray  # [N, K/32] float32
    m: np.ndarray  # [N, K/32] float32


@dataclass
class Int8Rows:
    codes: np.ndarray  # [V, D] int8
    scales: np.ndarray  # [V] float32


@dataclass
class Weights:
    """Weights by engine parameter name ("layers.3.attention.wq.weight"): float16 arrays,
    Int4Linear or Int8Rows (int4). Norms are float32."""

    tensors: dict[str, np.ndarray | Int4Linear | Int8Rows]


@dataclass
class _Builder:
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    count: int = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint: str, array: np.ndarray) -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, outputs: list[str] | None = None,
           **attrs) -> str:
        outputs = outputs or [self.name(hint or op_type.lower())]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, **attrs))
        return outputs[0]


def build(config: ModelConfig, weights: Weights, spec: GraphSpec, name: str) -> onnx.ModelProto:
    g = _Builder()
    c, t = config, spec.tokens
    kv_shape = [1, c.n_local_heads, spec.context, c.head_dim]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT32, [1, t]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT32, [t]),
    ]
    if spec.slots:
        inputs.append(helper.make_tensor_value_info("adapter_index", TensorProto.INT32, [1]))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, t, c.vocab_size])]
    for layer in range(c.n_layer):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_{kind}_{layer}", TensorProto.FLOAT16, kv_shape))
            outputs.append(helper.make_tensor_value_info(f"present_{kind}_{layer}", TensorProto.FLOAT16, kv_shape))
    lora = _lora_inputs(g, config, spec, inputs)

    positions = g.op("Cast", ["position_ids"], to=TensorProto.INT64)
    table = _table(g, weights.tensors["tok_embeddings.weight"])  # one copy, used by embedding and head
    x = _embed(g, table)
    cos, sin = _rope_tables(g, config, spec, positions)
    mask = _mask(g, spec, positions)
    scatter_index = g.op("Unsqueeze", [positions, g.const("axis1", np.array([1], np.int64))])  # [T, 1]
    for layer in range(c.n_layer):
        x = _block(g, config, weights, layer, x, cos, sin, mask, scatter_index, lora)
    h = _rms_norm(g, x, weights.tensors["norm.weight"], c.norm_eps)
    _head(g, table, h, config, t)

    graph = helper.make_graph(g.nodes, name, inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="hil-harness")
    model.ir_version = 10
    return model


def _lora_inputs(g: _Builder, config: ModelConfig, spec: GraphSpec, inputs: list) -> dict[str, tuple[str, str]]:
    """Bank inputs per module, cast to float32 once: module -> (A [L,S,d_in,r], B [L,S,r,d_out])."""
    from harness.engine.lora import MODULES, linear_shapes

    shapes = {inner: linear_shapes(config)[peft] for peft, (_, inner) in MODULES.items()}
    lora = {}
    for module in spec.lora_modules:
        d_in, d_out = shapes[module]
        suffix = LORA_MODULES[module]
        for side, shape in (("a", [config.n_layer, spec.slots, d_in, spec.rank]),
                            ("b", [config.n_layer, spec.slots, spec.rank, d_out])):
            inputs.append(helper.make_tensor_value_info(f"lora_{side}_{suffix}", TensorProto.FLOAT16, shape))
        lora[module] = (g.op("Cast", [f"lora_a_{suffix}"], to=TensorProto.FLOAT),
                        g.op("Cast", [f"lora_b_{suffix}"], to=TensorProto.FLOAT))
    return lora


def _table(g: _Builder, table: np.ndarray | Int8Rows) -> tuple[str, str | None]:
    # the tied embedding / LM head: (float16 table, None) or (int8 codes, per-row scales)
    if isinstance(table, Int8Rows):
        return g.const("emb_codes", table.codes), g.const("emb_scales", table.scales)
    return g.const("emb", table), None


def _embed(g: _Builder, table: tuple[str, str | None]) -> str:
    # input_ids [1, T] -> [1, T, dim] float32
    rows = g.op("Cast", [g.op("Gather", [table[0], "input_ids"])], to=TensorProto.FLOAT)  # [1, T, dim]
    if table[1] is None:
        return rows
    scales = g.op("Gather", [table[1], "input_ids"])  # [1, T]
    return g.op("Mul", [rows, g.op("Unsqueeze", [scales, g.const("axis", np.array([-1], np.int64))])])


def _head(g: _Builder, table: tuple[str, str | None], h: str, config: ModelConfig, tokens: int) -> None:
    # h [1, T, dim] -> logits [1, T, vocab] with the tied embedding
    rows = g.op("Reshape", [h, g.const("shape", np.array([tokens, config.dim], np.int64))])
    if table[1] is None:
        weight = g.op("Cast", [table[0]], to=TensorProto.FLOAT)
    else:
        weight = g.op("DequantizeLinear", [table[0], table[1]], axis=0)  # [V, dim] float32
    logits = g.op("Gemm", [rows, weight], transB=1)  # [T, V]
    g.op("Reshape", [logits, g.const("shape", np.array([1, tokens, config.vocab_size], np.int64))],
         outputs=["logits"])


def _rope_tables(g: _Builder, config: ModelConfig, spec: GraphSpec, positions: str) -> tuple[str, str]:
    # -> cos, sin [1, T, 1, D/2, 1] for the tokens' positions (the engine's own tables)
    table = precompute_freqs_cis(spec.context, config.head_dim, config.rope_base).numpy()  # [C, D/2, 2]
    shape = g.const("shape", np.array([1, spec.tokens, 1, config.head_dim // 2, 1], np.int64))
    cos = g.op("Gather", [g.const("cos", np.ascontiguousarray(table[..., 0])), positions])
    sin = g.op("Gather", [g.const("sin", np.ascontiguousarray(table[..., 1])), positions])
    return g.op("Reshape", [cos, shape]), g.op("Reshape", [sin, shape])


def _mask(g: _Builder, spec: GraphSpec, positions: str) -> str:
    # [T, C] additive mask: 0 where slot j <= position t, MASKED elsewhere
    slots = g.const("slots", np.arange(spec.context, dtype=np.int64)[None, :])  # [1, C]
    column = g.op("Unsqueeze", [positions, g.const("axis", np.array([1], np.int64))])  # [T, 1]
    allowed = g.op("LessOrEqual", [slots, column])
    return g.op("Where", [allowed, g.const("zero", np.array(0, np.float32)), g.const("masked", np.array(MASKED, np.float32))])


def _block(g: _Builder, config: ModelConfig, weights: Weights, layer: int, x: str, cos: str, sin: str,
           mask: str, scatter_index: str, lora: dict) -> str:
    p = f"layers.{layer}."
    w = weights.tensors
    h = _rms_norm(g, x, w[p + "attention_norm.weight"], config.norm_eps)
    attn = _attention(g, config, weights, layer, h, cos, sin, mask, scatter_index, lora)
    x = g.op("Add", [x, attn])
    h = _rms_norm(g, x, w[p + "ffn_norm.weight"], config.norm_eps)
    gate = _linear(g, weights, layer, "feed_forward.w1", h, lora)
    up = _linear(g, weights, layer, "feed_forward.w3", h, lora)
    act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])  # silu(gate) * up
    return g.op("Add", [x, _linear(g, weights, layer, "feed_forward.w2", act, lora)])


def _attention(g: _Builder, config: ModelConfig, weights: Weights, layer: int, h: str, cos: str, sin: str,
               mask: str, scatter_index: str, lora: dict) -> str:
    c = config
    heads = lambda n: g.const("shape", np.array([1, -1, n, c.head_dim], np.int64))  # noqa: E731
    q = _rope(g, g.op("Reshape", [_linear(g, weights, layer, "attention.wq", h, lora), heads(c.n_head)]), cos, sin, c)
    k = _rope(g, g.op("Reshape", [_linear(g, weights, layer, "attention.wk", h, lora), heads(c.n_local_heads)]), cos, sin, c)
    v = g.op("Reshape", [_linear(g, weights, layer, "attention.wv", h, lora), heads(c.n_local_heads)])
    keys = _write_cache(g, k, f"past_key_{layer}", f"present_key_{layer}", scatter_index)  # [1, Hkv, C, D] f32
    values = _write_cache(g, v, f"past_value_{layer}", f"present_value_{layer}", scatter_index)
    keys, values = _repeat_kv(g, keys, c), _repeat_kv(g, values, c)  # [1, H, C, D]
    q = g.op("Transpose", [q], perm=[0, 2, 1, 3])  # [1, H, T, D]
    scores = g.op("MatMul", [q, g.op("Transpose", [keys], perm=[0, 1, 3, 2])])  # [1, H, T, C]
    scores = g.op("Add", [g.op("Mul", [scores, g.const("scale", np.array(c.head_dim ** -0.5, np.float32))]), mask])
    y = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), values])  # [1, H, T, D]
    y = g.op("Reshape", [g.op("Transpose", [y], perm=[0, 2, 1, 3]), g.const("shape", np.array([1, -1, c.dim], np.int64))])
    return _linear(g, weights, layer, "attention.wo", y, lora)


def _rope(g: _Builder, x: str, cos: str, sin: str, c: ModelConfig) -> str:
    # x [1, T, H, D], rotated pairs adjacent (GGUF layout) -> same shape
    pairs = g.op("Reshape", [x, g.const("shape", np.array([1, 0, 0, c.head_dim // 2, 2], np.int64))])
    x0, x1 = g.name("x0"), g.name("x1")
    g.op("Split", [pairs, g.const("split", np.array([1, 1], np.int64))], outputs=[x0, x1], axis=-1)
    out0 = g.op("Sub", [g.op("Mul", [x0, cos]), g.op("Mul", [x1, sin])])
    out1 = g.op("Add", [g.op("Mul", [x1, cos]), g.op("Mul", [x0, sin])])
    rotated = g.op("Concat", [out0, out1], axis=-1)
    return g.op("Reshape", [rotated, g.const("shape", np.array([1, 0, 0, c.head_dim], np.int64))])


def _write_cache(g: _Builder, new: str, past: str, present: str, scatter_index: str) -> str:
    # new [1, T, Hkv, D] f32 -> present [1, Hkv, C, D] f16 with the T rows written; returns it as f32
    rows = g.op("Cast", [g.op("Transpose", [new], perm=[1, 0, 2, 3])], to=TensorProto.FLOAT16)  # [T, 1, Hkv, D]
    by_slot = g.op("Transpose", [past], perm=[2, 0, 1, 3])  # [C, 1, Hkv, D]
    written = g.op("ScatterND", [by_slot, scatter_index, rows])
    g.op("Transpose", [written], outputs=[present], perm=[1, 2, 0, 3])
    return g.op("Cast", [present], to=TensorProto.FLOAT)


def _repeat_kv(g: _Builder, x: str, c: ModelConfig) -> str:
    # [1, Hkv, C, D] -> [1, H, C, D], query head h reads KV head h // (H / Hkv)
    rep = c.n_head // c.n_local_heads
    expanded = g.op("Expand", [g.op("Unsqueeze", [x, g.const("axis", np.array([2], np.int64))]),
                               g.const("shape", np.array([1, 1, rep, 1, 1], np.int64))])
    return g.op("Reshape", [expanded, g.const("shape", np.array([1, c.n_head, -1, c.head_dim], np.int64))])


def _rms_norm(g: _Builder, x: str, weight: np.ndarray, eps: float) -> str:
    mean_square = g.op("ReduceMean", [g.op("Mul", [x, x]), g.const("axis", np.array([-1], np.int64))], keepdims=1)
    inverse = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [mean_square, g.const("eps", np.array(eps, np.float32))])])])
    return g.op("Mul", [g.op("Mul", [x, inverse]), g.const("norm", weight.astype(np.float32))])


def _linear(g: _Builder, weights: Weights, layer: int, module: str, x: str, lora: dict) -> str:
    # x [1, T, d_in] -> [1, T, d_out], plus the selected adapter's (x @ A) @ B
    weight = weights.tensors[f"layers.{layer}.{module}.weight"]
    if isinstance(weight, Int4Linear):
        y = _int4_matmul(g, x, weight)
    else:
        y = g.op("MatMul", [x, g.op("Cast", [g.const("w", np.ascontiguousarray(weight.T))], to=TensorProto.FLOAT)])
    if module not in lora:
        return y
    index = g.const("layer", np.array(layer, np.int64))
    a_all, b_all = lora[module]
    a = g.op("Gather", [g.op("Gather", [a_all, index]), "adapter_index"])  # [1, d_in, r]
    b = g.op("Gather", [g.op("Gather", [b_all, index]), "adapter_index"])  # [1, r, d_out]
    return g.op("Add", [y, g.op("MatMul", [g.op("MatMul", [x, a]), b])])


def _int4_matmul(g: _Builder, x: str, weight: Int4Linear) -> str:
    """x @ (d * q + m)^T with q as blocked uint4: x @ DQ(q^T) + (block sums of x) @ m^T."""
    n, k = weight.q.shape
    codes = _uint4(g.name("q4"), np.ascontiguousarray(weight.q.T))  # [K, N]
    g.initializers.append(codes)
    dequantized = g.op("DequantizeLinear", [codes.name, g.const("d", np.ascontiguousarray(weight.d.T))],
                       axis=0, block_size=INT4_BLOCK)  # [K, N] float32
    y = g.op("MatMul", [x, dequantized])
    blocks = g.op("Reshape", [x, g.const("shape", np.array([1, -1, k // INT4_BLOCK, INT4_BLOCK], np.int64))])
    sums = g.op("ReduceSum", [blocks, g.const("axis", np.array([-1], np.int64))], keepdims=0)  # [1, T, K/32]
    return g.op("Add", [y, g.op("MatMul", [sums, g.const("m", np.ascontiguousarray(weight.m.T))])])


def _uint4(name: str, codes: np.ndarray) -> onnx.TensorProto:
    # codes in 0..15 -> packed two per byte, first element in the low nibble (ONNX's 4-bit layout)
    flat = codes.astype(np.uint8).ravel()
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)
    return helper.make_tensor(name, TensorProto.UINT4, codes.shape, packed.tobytes(), raw=True)
