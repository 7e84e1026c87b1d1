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


@dataclass
class AdapterInputs:
    """A LoRA adapter bank passed to the forward as tensors (the paper's single frozen graph).

    weights: Linear path ("layers.3.attention.wq") -> (A [S, d_in, r], B [S, r, d_out]), with
    each slot's scale folded into B; slot 0 is all zeros (no adapter). index: [B] slot per row.
    Switching tasks changes `index` (or the bank's values), never the module graph.
    """

    weights: dict[str, tuple[Tensor, Tensor]]
    index: Tensor


@dataclass
class ExtraRows:
    """Rows given as vectors, not tokens (forecast tokens): their input embeddings and what is added
    to their residual stream before each block (deep prompt tuning)."""

    embeddings: Tensor  # [E, dim]
    layers: Tensor  # [n_layer, E, dim]


@dataclass
class RowKeys:
    """Each query row of a batch-1 forward attends its own KV slots, in order (DS2D's token trees).

    groups: (rows [R], slots [R, L]), one per number of slots L. Attention (decode_attention)
    then treats each row as the single-row decode step that would attend those slots.
    """

    groups: list[tuple[Tensor, Tensor]]

    @classmethod
    def after(cls, past: int, tails: list[list[int]]) -> "RowKeys":
        """Row r attends slots 0 .. past - 1, then tails[r]."""
        by_length: dict[int, list[int]] = {}
        for row, tail in enumerate(tails):
            by_length.setdefault(len(tail), []).append(row)
        groups = []
        for length, rows in by_length.items():
            head = torch.arange(past).expand(len(rows), past)
            tail = torch.tensor([tails[r] for r in rows]).view(len(rows), length)
            groups.append((torch.tensor(rows), torch.cat([head, tail], dim=1)))
        return cls(groups)


class KVCache(nn.Module):
    def __init__(self, max_batch_size: int, max_seq_len: int, n_heads: int, head_dim: int, dtype: torch.dtype):
        super().__init__()
        shape = (max_batch_size, n_heads, max_seq_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype), persistent=False)

    def update(self, cache_pos: Tensor, k: Tensor, v: Tensor, kv_len: int) -> tuple[Tensor, Tensor]:
        # cache_pos: [T] slots to write, k, v: [B, H_kv, T, D] -> [B, H_kv, kv_len, D]
        batch = k.shape[0]
        self.k_cache[:batch, :, cache_pos] = k
        self.v_cache[:batch, :, cache_pos] = v
        return self.k_cache[:batch, :, :kv_len], self.v_cache[:batch, :, :kv_len]


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        # weights come from the file: no random init (on the meta device its first use costs ~2 s)
        self.tok_embeddings = nn.Embedding.from_pretrained(torch.empty(config.vocab_size, config.dim))
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.max_seq_len = 0
        for path, module in self.named_modules():
            if isinstance(module, Linear):
                module.path = path  # the key of its adapter weights in AdapterInputs

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

    def hidden(self, tokens: Tensor, input_pos: Tensor, *, cache_pos: Tensor | None = None,
               mask: Tensor | None = None, keys: RowKeys | None = None,
               adapters: AdapterInputs | None = None, extra: ExtraRows | None = None) -> Tensor:
        # tokens: [B, T], input_pos: [T] RoPE positions -> [B, T, dim] (after the final norm)
        # extra: E rows after the tokens' (forecast tokens, batch 1); input_pos etc. cover T + E rows
        # cache_pos: [T] KV slots written (default input_pos; differs for token trees)
        # mask: [T, kv_len] bool, True = may attend (default: causal over cache slots)
        # keys: instead of a mask (batch 1), each row's own slots, attended as a decode step would
        cache_pos = input_pos if cache_pos is None else cache_pos
        if keys is None and mask is None:
            mask = self.causal_mask[cache_pos, : int(cache_pos.max()) + 1]
        freqs_cis = self.freqs_cis[input_pos]  # [T, head_dim / 2, 2]
        x = self.tok_embeddings(tokens)
        if extra is not None:
            x = torch.cat([x, extra.embeddings[None].to(x.dtype)], dim=1)
        for i, layer in enumerate(self.layers):
            if extra is not None:
                x = torch.cat([x[:, : tokens.shape[1]], x[:, tokens.shape[1] :] + extra.layers[i].to(x.dtype)], dim=1)
            x = layer(x, cache_pos, freqs_cis, mask if keys is None else keys, adapters)
        return self.norm(x)

    def head(self, h: Tensor) -> Tensor:
        # [..., dim] -> [..., vocab]; the LM head is the token embedding (tied)
        return linear(h, self.tok_embeddings.weight)

    def forward(self, tokens: Tensor, input_pos: Tensor, **inputs) -> Tensor:
        # tokens: [B, T], input_pos: [T] -> logits [B, T, vocab]; inputs as for hidden()
        return self.head(self.hidden(tokens, input_pos, **inputs))


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention = Attention(config)
        self.feed_forward = FeedForward(config)
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)

    def forward(self, x: Tensor, cache_pos: Tensor, freqs_cis: Tensor, mask: Tensor | RowKeys,
                adapters: AdapterInputs | None) -> Tensor:
        h = x + self.attention(self.attention_norm(x), freqs_cis, mask, cache_pos, adapters)
        return h + self.feed_forward(self.ffn_norm(h), adapters)


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

    def forward(self, x: Tensor, freqs_cis: Tensor, mask: Tensor | RowKeys, cache_pos: Tensor,
                adapters: AdapterInputs | None) -> Tensor:
        # x: [B, T, dim], mask: [T, kv_len] or each row's slots
        bsz, seqlen, dim = x.shape
        q = self.wq(x, adapters).view(bsz, seqlen, self.n_head, self.head_dim)
        k = self.wk(x, adapters).view(bsz, seqlen, self.n_local_heads, self.head_dim)
        v = self.wv(x, adapters).view(bsz, seqlen, self.n_local_heads, self.head_dim)
        q = apply_rotary_emb(q, freqs_cis)
        k = apply_rotary_emb(k, freqs_cis)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
        if isinstance(mask, RowKeys):
            self.kv_cache.update(cache_pos, k, v, 0)
            y = self._attend_rows(q, mask)
        else:
            k, v = self.kv_cache.update(cache_pos, k, v, mask.shape[-1])  # [B, H_kv, kv_len, D]
            if seqlen == 1:  # a decode step (of each stream): its causal row attends all kv_len slots
                y = decode_attention(q, k, v)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)  # [B, H, T, D]
        return self.wo(y.transpose(1, 2).reshape(bsz, seqlen, dim), adapters)

    def _attend_rows(self, q: Tensor, keys: RowKeys) -> Tensor:
        # q: [1, H, T, D] -> [1, H, T, D]; a group of R rows is a batch of R one-row queries
        y = torch.empty_like(q)
        used = max(int(slots.max()) for _, slots in keys.groups) + 1
        k_all, v_all = (c[0, :, :used].float() for c in (self.kv_cache.k_cache, self.kv_cache.v_cache))  # [H_kv, S', D]
        for rows, slots in keys.groups:
            r, length = slots.shape
            qg = q[0, :, rows].transpose(0, 1).unsqueeze(2)  # [R, H, 1, D]
            if r == 1 and int(slots[0, -1]) == length - 1:  # slots 0 .. L - 1: a view, no gather
                kg, vg = k_all[None, :, :length], v_all[None, :, :length]
            else:
                kg, vg = (c[:, slots.flatten()].view(c.shape[0], r, length, -1).transpose(0, 1) for c in (k_all, v_all))
            y[0, :, rows] = decode_attention(qg, kg, vg)[:, :, 0].transpose(0, 1)
        return y


def decode_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """R single-row queries, each over all of its own L keys: q [R, H, 1, D], k, v [R, H_kv, L, D].

    Every decode step and every row of a DS2D token tree goes through this, so a tree row's
    result is bit-identical to greedy's step at its position: PyTorch's CPU attention rounds a
    row differently when it shares a call with other query rows or sees extra masked keys,
    but is batch-invariant (measured in fp32, fp16 and bf16). float32 inside: on this CPU
    its attention kernel costs 74 us for one row over 300 keys, bf16's 313 us, fp16's 655 us.
    """
    y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True)
    return y.to(q.dtype)


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.w1 = Linear(config.dim, config.intermediate_size)  # gate
        self.w3 = Linear(config.dim, config.intermediate_size)  # up
        self.w2 = Linear(config.intermediate_size, config.dim)  # down

    def forward(self, x: Tensor, adapters: AdapterInputs | None) -> Tensor:
        return self.w2(F.silu(self.w1(x, adapters)) * self.w3(x, adapters), adapters)


class Linear(nn.Module):
    """Bias-free linear layer; the precision module decides how the matmul runs.

    With adapters, each row b adds its slot's low-rank update: (x_b @ A[i_b]) @ B[i_b].
    """

    path = ""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))

    def forward(self, x: Tensor, adapters: AdapterInputs | None = None) -> Tensor:
        y = linear(x, self.weight)
        if adapters is not None and self.path in adapters.weights:
            a, b = adapters.weights[self.path]  # [S, d_in, r], [S, r, d_out]
            index = adapters.index  # [B]
            y = y + torch.bmm(torch.bmm(x.to(a.dtype), a[index]), b[index]).to(y.dtype)  # [B, T, d_out]
        return y


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
