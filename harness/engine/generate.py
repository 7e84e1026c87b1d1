"""Greedy decoding, batch 1, with a timestamp per generated token."""
import time
from dataclasses import dataclass, field

import torch

from harness.engine.model import Transformer


@dataclass
class Generation:
    token_ids: list[int]  # generated tokens only; ends with EOS if EOS was produced
    token_times: list[float]  # seconds since the request started (before prefill), one per token
    prompt_tokens: int
    stats: dict[str, float | list[float]] = field(default_factory=dict)  # technique counters (e.g. DS2D acceptance)


@torch.inference_mode()
def greedy(model: Transformer, prompt_ids: list[int], max_new_tokens: int, eos_id: int) -> Generation:
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
        pos = torch.tensor([len(prompt_ids) + len(ids) - 1])
        logits = model(token.view(1, 1), pos)[:, -1]


def check_lengths(model: Transformer, prompt_tokens: int, max_new_tokens: int) -> None:
    if prompt_tokens < 1 or max_new_tokens < 1:
        raise ValueError(f"need a non-empty prompt and max_new_tokens >= 1, got {prompt_tokens}, {max_new_tokens}")
    if prompt_tokens + max_new_tokens > model.max_seq_len:
        raise ValueError(
            f"prompt ({prompt_tokens}) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len {model.max_seq_len}"
        )
