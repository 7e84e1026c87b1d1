"""Llama-architecture decoder (gpt-fast style) with a preallocated KV cache."""
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from harness.engine.precision import linear


@dataclass
class ModelConfig:
    n_layer: int
    dim: int
    intermediate_size: int
    n_head: int
    n_local_heads: int  # KV heads (GQA)
    vocab_size: int
    rope_base: float
    norm_eps: float
    max_context: int
    head_dim: int = field(init=False)

    def __post_init__(self) -> None:
        self.head_dim = self.dim // self.n_head


class KVCache(nn.Module):
    def __init__(self, max_batch_size: int, max_seq_len: int, n_heads: int, head_dim: int, dtype: torch.dtype):
        super().__init__()
        shape = (max_batch_size, n_heads, max_seq_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype), persistent=False)

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor, kv_len: int) -> tuple[Tensor, Tensor]:
        # input_pos: [T], k, v: [B, H_kv, T, D] -> [B, H_kv, kv_len, D]
        batch = k.shape[0]
        self.k_cache[:batch, :, input_pos] = k
        self.v_cache[:batch, :, input_pos] = v
        return self.k_cache[:batch, :, :kv_len], self.v_cache[:batch, :, :kv_len]


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.max_seq_len = 0

    def setup_caches(self, max_batch_size: int, max_seq_len: int, dtype: torch.dtype) -> None:
        self.max_seq_len = max_seq_len
        c = self.config
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(max_batch_size, max_seq_len, c.n_local_heads, c.head_dim, dtype)
        self.register_buffer("freqs_cis", precompute_freqs_cis(max_seq_len, c.head_dim, c.rope_base), persistent=False)
        causal = torch.tril(torch.ones(max_seq_len, max_seq_len, dtype=torch.bool))
        self.register_buffer("causal_mask", causal, persistent=False)

    def reset_caches(self) -> None:
        for layer in self.layers:
            layer.attention.kv_cache.k_cache.zero_()
            layer.attention.kv_cache.v_cache.zero_()

    def hidden(self, tokens: Tensor, input_pos: Tensor) -> Tensor:
        # tokens: [B, T], input_pos: [T] -> [B, T, dim] (after the final norm)
        kv_len = int(input_pos.max()) + 1
        mask = self.causal_mask[input_pos, :kv_len]  # [T, kv_len]
        freqs_cis = self.freqs_cis[input_pos]  # [T, head_dim / 2, 2]
        x = self.tok_embeddings(tokens)
        for layer in self.layers:
            x = layer(x, input_pos, freqs_cis, mask)
        return self.norm(x)

    def head(self, h: Tensor) -> Tensor:
        # [..., dim] -> [..., vocab]; the LM head is the token embedding (tied)
        return linear(h, self.tok_embeddings.weight)

    def forward(self, tokens: Tensor, input_pos: Tensor) -> Tensor:
        # tokens: [B, T], input_pos: [T] -> logits [B, T, vocab]
        return self.head(self.hidden(tokens, input_pos))


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention = Attention(config)
        self.feed_forward = FeedForward(config)
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)

    def forward(self, x: Tensor, input_pos: Tensor, freqs_cis: Tensor, mask: Tensor) -> Tensor:
        h = x + self.attention(self.attention_norm(x), freqs_cis, mask, input_pos)
        return h + self.feed_forward(self.ffn_norm(h))


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        kv_dim = config.n_local_heads * config.head_dim
        self.wq = Linear(config.dim, config.dim)
        self.wk = Linear(config.dim, kv_dim)
        self.wv = Linear(config.dim, kv_dim)
        self.wo = Linear(config.dim, config.dim)
        self.kv_cache: KVCache | None = None
        self.n_head = config.n_head
        self.n_local_heads = config.n_local_heads
        self.head_dim = config.head_dim

    def forward(self, x: Tensor, freqs_cis: Tensor, mask: Tensor, input_pos: Tensor) -> Tensor:
        # x: [B, T, dim], mask: [T, kv_len]
        bsz, seqlen, dim = x.shape
        q = self.wq(x).view(bsz, seqlen, self.n_head, self.head_dim)
        k = self.wk(x).view(bsz, seqlen, self.n_local_heads, self.head_dim)
        v = self.wv(x).view(bsz, seqlen, self.n_local_heads, self.head_dim)
        q = apply_rotary_emb(q, freqs_cis)
        k = apply_rotary_emb(k, freqs_cis)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
        k, v = self.kv_cache.update(input_pos, k, v, mask.shape[-1])  # [B, H_kv, kv_len, D]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)  # [B, H, T, D]
        return self.wo(y.transpose(1, 2).reshape(bsz, seqlen, dim))


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.w1 = Linear(config.dim, config.intermediate_size)  # gate
        self.w3 = Linear(config.dim, config.intermediate_size)  # up
        self.w2 = Linear(config.intermediate_size, config.dim)  # down

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Linear(nn.Module):
    """Bias-free linear layer; the precision module decides how the matmul runs."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


def precompute_freqs_cis(seq_len: int, head_dim: int, base: float) -> Tensor:
    # -> [seq_len, head_dim / 2, 2] (cos, sin), float32
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(torch.arange(seq_len).float(), freqs)
    return torch.stack([angles.cos(), angles.sin()], dim=-1)


def apply_rotary_emb(x: Tensor, freqs_cis: Tensor) -> Tensor:
    # x: [B, T, H, D] with rotated pairs adjacent (x[..., 0::2], x[..., 1::2]): GGUF's Q/K layout
    xs = x.float().reshape(*x.shape[:-1], -1, 2)  # [B, T, H, D/2, 2]
    fc = freqs_cis.view(1, xs.size(1), 1, xs.size(3), 2)
    out = torch.stack(
        [xs[..., 0] * fc[..., 0] - xs[..., 1] * fc[..., 1], xs[..., 1] * fc[..., 0] + xs[..., 0] * fc[..., 1]],
        dim=-1,
    )
    return out.flatten(3).type_as(x)
