"""Fidelity against a reference variant: KL divergence of next-token distributions.

The reference (baseline) runner sends, for each generated position of its own greedy
output, its top-k log-probabilities; a candidate runner scores the same token sequence
(teacher forcing) and computes KL(reference || candidate) over those k tokens plus one
bucket holding the rest of the vocabulary. Grouping tokens can only lower a KL
divergence, so this is a lower bound of the full KL; with k = 64 the bucket holds little
mass for a model this size. Full distributions (49152 floats a position) would not fit
in the runner's event stream, least of all from a phone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.engine.model import AdapterInputs, Transformer

TOP_K = 64


@dataclass
class Teacher:
    """The reference's view of one sequence: prompt + its greedy output."""

    tokens: list[int]
    start: int  # index of the first generated token in `tokens`
    top_ids: list[list[int]]  # [generated, k] for each generated position
    top_logprobs: list[list[float]]  # [generated, k]

    def as_dict(self) -> dict:
        return {"tokens": self.tokens, "start": self.start, "top_ids": self.top_ids, "top_logprobs": self.top_logprobs}


@torch.inference_mode()
def _logprobs(model: Transformer, tokens: list[int], start: int, adapters: AdapterInputs | None) -> torch.Tensor:
    # -> [len(tokens) - start, vocab] float32: the distributions that predicted tokens[start:]
    model.reset_caches()
    hidden = model.hidden(torch.tensor([tokens]), torch.arange(len(tokens)), adapters=adapters)  # [1, T, dim]
    logits = model.head(hidden[0, start - 1 : len(tokens) - 1])  # only the rows we need
    return torch.log_softmax(logits.float(), dim=-1)


def teacher(model: Transformer, prompt_ids: list[int], output_ids: list[int],
            adapters: AdapterInputs | None = None) -> Teacher:
    tokens = prompt_ids + output_ids
    top = _logprobs(model, tokens, len(prompt_ids), adapters).topk(TOP_K, dim=-1)
    return Teacher(tokens, len(prompt_ids), top.indices.tolist(), top.values.tolist())


def kl_divergence(model: Transformer, reference: Teacher, adapters: AdapterInputs | None = None) -> float:
    """Mean over positions of KL(reference || this model), top-k plus one bucket for the rest."""
    q = _logprobs(model, reference.tokens, reference.start, adapters)  # [G, vocab]
    ids = torch.tensor(reference.top_ids)  # [G, k]
    lp = torch.tensor(reference.top_logprobs)  # [G, k]
    lq = q.gather(1, ids)  # [G, k]
    p_rest = (1 - lp.exp().sum(-1)).clamp_min(1e-12)  # [G]
    q_rest = (1 - lq.exp().sum(-1)).clamp_min(1e-12)
    kl = (lp.exp() * (lp - lq)).sum(-1) + p_rest * (p_rest.log() - q_rest.log())  # [G]
    return float(kl.mean())
