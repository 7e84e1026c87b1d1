"""K greedy streams of one prompt, one LoRA adapter each, advanced by one batched forward per step.

The caller allocates a KV cache of at least K rows first: `model.setup_caches(K, max_seq_len, dtype)`
(`Engine.reserve` allocates one row). Prefill modes:
  per_stream: the prompt runs as a batch of K rows, row i with adapter i; stream i is then the
              single-stream greedy run with adapter i.
  shared:     the prompt but its last token runs once with the base model and its K/V are copied
              to the K rows; the last prompt token and all generated tokens use each row's adapter.
              Cheaper; not identical to per_stream, since the prompt's K/V carry no style.
A stream that emits EOS (or reaches max_new_tokens) stops recording tokens; its row keeps being
computed, with its tokens discarded, until every stream has finished (the batch shape stays fixed).
"""
import time

import torch
from torch import Tensor

from harness.engine.generate import Generation, check_lengths
from harness.engine.lora import AdapterBank
from harness.engine.model import AdapterInputs, Transformer
from harness.spec.variant import PREFILLS



@torch.inference_mode()
def generate_streams(model: Transformer, prompt_ids: list[int], max_new_tokens: int, eos_id: int,
                     inputs: AdapterInputs, prefill: str = "per_stream") -> list[Generation]:
    """One Generation per row of `inputs` (`AdapterBank.inputs`: row i's adapter, or the base);
    token_times share the request's clock. The caller builds `inputs`: that is the adapter
    switch, and the caller times it."""
    streams = len(inputs.index)
    check_streams(model, streams, prefill)
    check_lengths(model, len(prompt_ids), max_new_tokens)
    start = time.perf_counter()
    prefill_fn = prefill_per_stream if prefill == "per_stream" else prefill_shared
    logits = prefill_fn(model, prompt_ids, inputs)  # [K, vocab]
    prefill_s = time.perf_counter() - start
    ids: list[list[int]] = [[] for _ in range(streams)]
    times: list[list[float]] = [[] for _ in range(streams)]
    live, steps = list(range(streams)), 0
    while True:
        token = logits.argmax(-1)  # [K]
        now = time.perf_counter() - start
        values, steps = token.tolist(), steps + 1
        for i in live:
            ids[i].append(values[i])
            times[i].append(now)
        live = [i for i in live if values[i] != eos_id and steps < max_new_tokens]
        if not live:
            break
        pos = torch.tensor([len(prompt_ids) + steps - 1])
        logits = model(token.view(streams, 1), pos, adapters=inputs)[:, -1]
    stats = {"streams": float(streams), "prefill_ms": 1e3 * prefill_s, "steps": float(steps)}
    return [Generation(i, t, len(prompt_ids), dict(stats)) for i, t in zip(ids, times)]


def generate_with_adapter(model: Transformer, prompt_ids: list[int], max_new_tokens: int, eos_id: int,
                          bank: AdapterBank, adapter: str | None) -> Generation:
    """Single-stream greedy (batch 1, index [slot]): the sequential baseline."""
    return generate_streams(model, prompt_ids, max_new_tokens, eos_id, bank.inputs([adapter]))[0]


def check_streams(model: Transformer, streams: int, prefill: str) -> None:
    if prefill not in PREFILLS:
        raise ValueError(f"unknown prefill {prefill!r}; known: {', '.join(PREFILLS)}")
    if streams < 1:
        raise ValueError("need at least one stream")
    rows = model.layers[0].attention.kv_cache.k_cache.shape[0]
    if streams > rows:
        raise ValueError(f"{streams} streams need a KV cache of {streams} rows, it has {rows}: "
                         f"call model.setup_caches({streams}, max_seq_len, dtype) first")


def prefill_per_stream(model: Transformer, prompt_ids: list[int], inputs: AdapterInputs) -> Tensor:
    # -> [K, vocab] logits after the prompt, row i through adapter i
    tokens = torch.tensor([prompt_ids]).expand(len(inputs.index), -1)  # [K, T]
    return model.head(model.hidden(tokens, torch.arange(len(prompt_ids)), adapters=inputs)[:, -1])


def prefill_shared(model: Transformer, prompt_ids: list[int], inputs: AdapterInputs) -> Tensor:
    # base K/V of prompt[:-1] in row 0, copied to every row; the last prompt token runs per row
    streams, shared = len(inputs.index), len(prompt_ids) - 1
    if shared:
        model.hidden(torch.tensor([prompt_ids[:-1]]), torch.arange(shared))
        copy_row0(model, streams, shared)
    last = torch.tensor([[prompt_ids[-1]]]).expand(streams, 1)  # [K, 1]
    return model(last, torch.tensor([shared]), adapters=inputs)[:, -1]


def copy_row0(model: Transformer, rows: int, length: int) -> None:
    for layer in model.layers:
        cache = layer.attention.kv_cache
        for buf in (cache.k_cache, cache.v_cache):  # [max_batch, H_kv, max_seq, D]
            buf[1:rows, :, :length] = buf[:1, :, :length]
