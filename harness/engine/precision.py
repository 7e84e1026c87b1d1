"""The one place that says how each precision stores weights and computes with them."""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from harness.spec.variant import PRECISIONS


@dataclass(frozen=True)
class Precision:
    name: str
    dtype: torch.dtype  # activations and KV cache; also the weights, unless int4
    int4: bool = False  # int4 linears, int8 embedding/LM head, float32 norms (harness/engine/int4.py)


_PRECISIONS = {
    p.name: p
    for p in (
        Precision("fp32", torch.float32),
        Precision("fp16", torch.float16),
        Precision("int4", torch.bfloat16, int4=True),  # bf16: the int4 kernel's fast inputs (int4.ACTIVATIONS)
    )
}
assert tuple(_PRECISIONS) == PRECISIONS, "the engine holds every precision a variant may name"

# Forwards of up to this many rows (decode steps, DS2D token trees, short prompts) use kernels
# whose every row comes out as if computed alone: the native fp16 GEMM here (int4's kernel is
# so at any size), model.row_invariant_attention there. MKL's fp32 GEMM is not (measured: M = 1
# and M > 1 differ by up to 5e-5), so fp32 DS2D is greedy's only up to such rounding.
DECODE_ROWS = 64


def get_precision(name: str) -> Precision:
    if name not in _PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; known precisions: {', '.join(PRECISIONS)}")
    return _PRECISIONS[name]


def linear(x: Tensor, weight: Tensor | nn.Module) -> Tensor:
    """x @ weight.T in x's dtype; fp16 weights stay stored in fp16 either way.

    A quantized weight is a module that computes x @ weight.T itself (int4.Int4Weight: bf16 out).

    This CPU (AVX-512, no AVX512-FP16/AMX-FP16) has no fast fp16 GEMM in PyTorch 2.13: a
    native fp16 matmul costs about the same per row as a gemv, so it wins while decoding
    (half the bytes to read, and it beats MKL's single-threaded fp32 gemv) and loses badly
    on prompts; it is also row-invariant (each row's result does not depend on the others),
    which DS2D's token trees need to be greedy's exactly. Upcasting the fp16 weight per call loses while decoding (the cast reads and
    writes every weight, 46 ms for the LM head alone) but runs prompts near fp32 speed.
    Measured on 2 idle cores, one forward of T tokens, LM head on all T rows, in ms:

        T      fp32   fp16 native   fp16 upcast   chosen (native if rows <= 64)
        1      60        24            76            22
        8      73        86           121            79
        16     90       148           147           148
        64    172       491           278           491
        256   559      2148           902           808

    (measured with native up to 8 rows; 9..64 rows now take the native path too.)
    greedy decode, 64 tokens: fp32 55 ms/token, fp16 (chosen) 23 ms/token.
    """
    if isinstance(weight, nn.Module):
        return weight(x)
    rows = x.numel() // x.shape[-1]
    if weight.dtype == torch.float16 and rows > DECODE_ROWS:
        return F.linear(x.float(), weight.float()).to(x.dtype)
    return F.linear(x, weight)
