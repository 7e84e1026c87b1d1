"""Greedy decoding, batch 1, with a timestamp per generated token."""
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from harness.engine.model import Transformer

DecodeStep = Callable[[Transformer, Tensor, Tensor, int], Tensor]


@dataclass
class Generation:
    token_ids: list[int]  # generated tokens only; ends with EOS if EOS was produced
    token_times: list[float]  # seconds since the request started (before prefill), one per token
    prompt_tokens: int
    stats: dict[str, float | list[float]] = field(default_factory=dict)  # technique counters (e.g. DS2D acceptance)


def decode_step(model: Transformer, token: Tensor, pos: Tensor, kv_len: int) -> Tensor:
    """One token through the model: token [1, 1] at position pos [1], attending to kv_len slots -> logits [1, vocab].

    kv_len is a plain int so that a compiled step sees one symbolic size, not a data-dependent slice.
    """
    return model(token, pos, mask=model.causal_mask[pos, :kv_len])[:, -1]


@torch.inference_mode()
def greedy(model: Transformer, prompt_ids: list[int], max_new_tokens: int, eos_id: int,
           step: DecodeStep = decode_step) -> Generation:
    check_lengths(model, len(prompt_ids), max_new_tokens)
    model.reset_caches()
    start = time.perf_counter()
    tokens = torch.tensor([prompt_ids])  # [1, T]
    logits = model.head(model.hidden(tokens, torch.arange(len(prompt_ids)))[:, -1])  # [1, vocab]
    ids: list[int] = []
    times: list[float] = []
    while True:
        token = logits.argmax(-1)  # [1]
        ids.append(token.item())
        times.append(time.perf_counter() - start)
        if ids[-1] == eos_id or len(ids) == max_new_tokens:
            return Generation(ids, times, len(prompt_ids))
        pos = len(prompt_ids) + len(ids) - 1
        logits = step(model, token.view(1, 1), torch.tensor([pos]), pos + 1)


def check_lengths(model: Transformer, prompt_tokens: int, max_new_tokens: int) -> None:
    if prompt_tokens < 1 or max_new_tokens < 1:
        raise ValueError(f"need a non-empty prompt and max_new_tokens >= 1, got {prompt_tokens}, {max_new_tokens}")
    if prompt_tokens + max_new_tokens > model.max_seq_len:
        raise ValueError(
            f"prompt ({prompt_tokens}) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len {model.max_seq_len}"
        )
