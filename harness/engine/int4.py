"""The int4 precision: the GGUF's Q4_1 linears repacked exactly for PyTorch's CPU int4 kernel.

Linears (79 % of the parameters): Q4_1 blocks of 32 (w = d * q + m) become the kernel's group-32
codes with scale = d and zero = m + 8d, exact up to rounding d and m + 8d to bf16.
Tied embedding / LM head (21 %, Q8_0 in the file): int8 rows with one bf16 scale per row, one
copy used both by the head (_weight_int8pack_mm) and by the embedding lookup (a row gather).
Norms stay float32; activations and the KV cache are bf16, the kernel's only fast input dtype.

Measured on 8 chat prompts x 48 greedy tokens against fp32 (mean KL of next-token
distributions teacher-forced on fp32's output; top-1 agreement), bytes vs fp16's 269,030,016:

    linears              embedding/head   weights_bytes   x fp16   mean KL   top-1
    int4 g32 (exact)     int8 rows          94,905,600    0.353    0.0021    97.5 %  <- chosen
    int4 g32 (exact)     int4 g32           84,190,464    0.313    0.055     87.7 %
    int4 g32 (exact)     int4 g64           82,420,992    0.306    0.080     80.6 %
    int4 g64 (requant)   int8 rows          88,270,080    0.328    0.286     75.7 %
    int4 g64 (requant)   int4 g64           75,785,472    0.282    0.397     69.7 %
    (bf16 head and lookup, reference point: KL 0.0011; fp32 logits rounded to bf16: 0.0003)
    requant: min/max codes refitted by least squares (-20 % squared error); a scale grid: -10 % more

Only group-64 linears fit 0.30x fp16, and requantizing Q4_1 to 64-weight groups adds about as
much noise again as Q4_1 itself (KL x100). An int4 head is the next-largest loss (KL x25); the
int8 head costs ~2 ms a token at 2 threads, ~1.6 ms more than an int4 one would.
"""
import gguf
import torch
import torch.nn as nn
from torch import Tensor

from harness.engine.gguf_file import GGUFFile, dequantized, named_tensors, q4_1_blocks, rows_dequantized
from harness.engine.model import Linear, Transformer

ACTIVATIONS = torch.bfloat16  # fp16 or fp32 inputs take the kernel's scalar path, ~50x slower
GROUP_SIZE = 32  # = Q4_1's block: the repacking is exact
EMBEDDING_CHUNK_ROWS = 4096  # embedding rows held in float32 at once while loading


class Int4Weight(nn.Module):
    """A weight [N, K] as 4-bit codes, w = (q - 8) * scale + zero with one (scale, zero) per 32 inputs.

    Called on x [..., K] it returns x @ w.T [..., N] in bf16 from the CPU int4 kernel.
    """

    def __init__(self, out_features: int, in_features: int):
        super().__init__()
        groups = in_features // GROUP_SIZE
        self.register_buffer("packed", torch.empty(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales_and_zeros", torch.empty(groups, out_features, 2, dtype=ACTIVATIONS))

    def forward(self, x: Tensor) -> Tensor:
        # x: [..., K] -> [..., N]
        rows = x.reshape(-1, x.shape[-1]).to(ACTIVATIONS)  # [M, K]
        y = torch._weight_int4pack_mm_for_cpu(rows, self.packed, GROUP_SIZE, self.scales_and_zeros)  # [M, N]
        return y.view(*x.shape[:-1], -1)


class Int8Weight(nn.Module):
    """A weight [N, K] as int8 codes with one bf16 scale per row: w = codes * scale."""

    def __init__(self, out_features: int, in_features: int):
        super().__init__()
        self.register_buffer("codes", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.empty(out_features, dtype=ACTIVATIONS))

    def forward(self, x: Tensor) -> Tensor:
        # x: [..., K] -> x @ w.T: [..., N] bf16
        y = torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]).to(ACTIVATIONS), self.codes, self.scales)
        return y.view(*x.shape[:-1], -1)

    def rows(self, index: Tensor) -> Tensor:
        # index: [...] -> w[index]: [..., K] bf16
        return (self.codes[index].float() * self.scales[index].float().unsqueeze(-1)).to(ACTIVATIONS)


class Int8Embedding(nn.Module):
    """Token embedding whose table is an Int8Weight; Transformer.head multiplies by the same one."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.weight = Int8Weight(vocab_size, dim)

    def forward(self, tokens: Tensor) -> Tensor:
        # tokens: [B, T] -> [B, T, dim] bf16
        return self.weight.rows(tokens)


def repack_q4_1(d: Tensor, m: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    """Q4_1 blocks (gguf_file.q4_1_blocks) -> (packed [N, K/2] uint8, scales_and_zeros [K/32, N, 2] bf16).

    d * q + m = (q - 8) * d + (m + 8d): the kernel's scale is d, its zero m + 8d.
    """
    # .clone() once the int32 copy of q is freed reuses that memory; keeping the op's own output
    # (allocated above the copy) fragments the heap: +200 MB peak RSS over the model's 210 linears
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1).clone()
    scales_and_zeros = torch.stack([d, m + 8 * d], dim=-1).transpose(0, 1)  # [K/32, N, 2]
    return packed, scales_and_zeros.to(ACTIVATIONS).contiguous()


def int8_rows(w: Tensor) -> tuple[Tensor, Tensor]:
    # w: [N, K] float32 -> codes [N, K] int8, scales [N] bf16; codes fit the bf16-rounded scale
    scales = (w.abs().amax(-1) / 127).clamp_min(1e-10).to(ACTIVATIONS)
    return (w / scales.float().unsqueeze(-1)).round_().clamp_(-127, 127).to(torch.int8), scales


def embedding_weights(tensor: gguf.ReaderTensor) -> tuple[Tensor, Tensor]:
    """The Q8_0 embedding as int8 rows, a chunk of rows in float32 at a time."""
    rows, dim = tensor.data.shape[0], int(tensor.shape[0])
    codes, scales = torch.empty(rows, dim, dtype=torch.int8), torch.empty(rows, dtype=ACTIVATIONS)
    for start, w in zip(range(0, rows, EMBEDDING_CHUNK_ROWS), rows_dequantized(tensor, EMBEDDING_CHUNK_ROWS)):
        codes[start : start + len(w)], scales[start : start + len(w)] = int8_rows(w)
    return codes, scales


def swap_weights(model: Transformer) -> None:
    """Give a (meta) model int4 linears and an int8 embedding, for load_state_dict(state_dict(...), assign=True).

    Each Linear keeps its class and `path`, so LoRA adapters still add on top; its `weight` becomes
    an Int4Weight module, which precision.linear calls.
    """
    for module in list(model.modules()):
        if isinstance(module, Linear):
            out_features, in_features = module.weight.shape
            del module.weight
            module.weight = Int4Weight(out_features, in_features)
    model.tok_embeddings = Int8Embedding(*model.tok_embeddings.weight.shape)


def state_dict(file: GGUFFile) -> dict[str, Tensor]:
    """Weights under swap_weights' names, one GGUF tensor converted at a time; norms stay float32."""
    weights = {}
    for name, tensor in named_tensors(file):
        if name == "tok_embeddings.weight":
            weights[f"{name}.codes"], weights[f"{name}.scales"] = embedding_weights(tensor)
        elif tensor.tensor_type == gguf.GGMLQuantizationType.Q4_1:
            weights[f"{name}.packed"], weights[f"{name}.scales_and_zeros"] = repack_q4_1(*q4_1_blocks(tensor))
        else:
            weights[name] = torch.from_numpy(dequantized(tensor))
    return weights
