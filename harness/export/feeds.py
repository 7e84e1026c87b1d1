"""Graph inputs with real data, and the host reference's logits for them.

The PyTorch engine (the host reference) runs the prompt in the graph's chunks, padded to
the chunk length, with the adapter bank as forward inputs. Each case is the graph's input
for the last prompt chunk (prefill) and for the first generated token (decode), holding
the engine's own KV cache at that point, plus the engine's logits for the same call, so a
device's outputs can be compared position by position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from harness.engine import Engine
from harness.engine.lora import AdapterBank
from harness.engine.model import AdapterInputs
from harness.export.graph import LORA_MODULES, GraphSpec


@dataclass
class Case:
    """One graph call: its inputs, the reference logits and the rows that are real tokens."""

    inputs: dict[str, np.ndarray]
    reference: np.ndarray  # [T, vocab] float32
    rows: int  # the first `rows` positions are prompt/generated tokens; the rest is padding


def bank_inputs(bank: AdapterBank, spec: GraphSpec, n_layer: int) -> dict[str, np.ndarray]:
    """The bank as the graph's lora_a_* / lora_b_* inputs: [L, S, d_in, r] / [L, S, r, d_out] float16."""
    stacked: dict[str, np.ndarray] = {}
    for module in spec.lora_modules:
        suffix = LORA_MODULES[module]
        for side, index in (("a", 0), ("b", 1)):
            layers = [bank.weights.get(f"layers.{layer}.{module}") for layer in range(n_layer)]
            template = next(pair[index] for pair in layers if pair is not None)
            stacked[f"lora_{side}_{suffix}"] = np.stack(
                [(pair[index] if pair is not None else torch.zeros_like(template)).float().numpy() for pair in layers]
            ).astype(np.float16)
    return stacked


def lora_shape(bank: AdapterBank) -> tuple[int, int, tuple[str, ...]]:
    """(slots, rank, modules) of a bank; (0, 0, ()) without adapters."""
    if not bank.slots:
        return 0, 0, ()
    modules = tuple(m for m in LORA_MODULES if any(p.endswith(m) for p in bank.weights))
    rank = next(iter(bank.weights.values()))[0].shape[-1]
    return len(bank.slots) + 1, rank, modules


@torch.inference_mode()
def cases(engine: Engine, prompt_ids: list[int], bank: AdapterBank, adapter: str | None,
          prefill: GraphSpec, decode: GraphSpec) -> tuple[Case, Case]:
    """(last prefill chunk, first decode step) for one prompt through one adapter (None: base)."""
    model, chunk = engine.model, prefill.tokens
    engine.reserve(prefill.context)
    model.reset_caches()
    adapters = bank.inputs([adapter]) if bank.slots else None
    slot = bank.slots.get(adapter, 0) if adapter else 0
    n_chunks = -(-len(prompt_ids) // chunk)
    padded = prompt_ids + [0] * (n_chunks * chunk - len(prompt_ids))
    for k in range(n_chunks):
        if k == n_chunks - 1:
            prefill_case = _case(engine, padded[k * chunk:(k + 1) * chunk], k * chunk, adapters, slot, bank, prefill)
            prefill_case.rows = len(prompt_ids) - k * chunk
        else:
            _forward(engine, padded[k * chunk:(k + 1) * chunk], k * chunk, adapters)
    next_token = int(prefill_case.reference[prefill_case.rows - 1].argmax())
    decode_case = _case(engine, [next_token], len(prompt_ids), adapters, slot, bank, decode)
    return prefill_case, decode_case


def _case(engine: Engine, tokens: list[int], start: int, adapters: AdapterInputs | None, slot: int,
          bank: AdapterBank, spec: GraphSpec) -> Case:
    inputs = {
        "input_ids": np.array([tokens], dtype=np.int32),
        "position_ids": np.arange(start, start + len(tokens), dtype=np.int32),
    }
    if spec.slots:
        inputs["adapter_index"] = np.array([slot], dtype=np.int32)
    for layer, block in enumerate(engine.model.layers):
        cache = block.attention.kv_cache
        inputs[f"past_key_{layer}"] = cache.k_cache[:1].float().numpy().astype(np.float16)
        inputs[f"past_value_{layer}"] = cache.v_cache[:1].float().numpy().astype(np.float16)
    if spec.slots:
        inputs.update(bank_inputs(bank, spec, len(engine.model.layers)))
    reference = _forward(engine, tokens, start, adapters)
    return Case(inputs, reference, len(tokens))


def _forward(engine: Engine, tokens: list[int], start: int, adapters: AdapterInputs | None) -> np.ndarray:
    # one engine call at positions start.. -> logits [T, vocab] float32
    logits = engine.model(torch.tensor([tokens]), torch.arange(start, start + len(tokens)), adapters=adapters)
    return logits[0].float().numpy()


def compare(logits: np.ndarray, case: Case) -> tuple[float, float]:
    """(top-1 agreement, max |logit difference|) over the case's real rows; logits [1, T, vocab]."""
    got, want = logits.reshape(-1, logits.shape[-1])[: case.rows], case.reference[: case.rows]
    agreement = float((got.argmax(-1) == want.argmax(-1)).mean())
    return agreement, float(np.abs(got - want).max())
