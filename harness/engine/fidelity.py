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
    target_logprobs: list[float] | None = None  # log-prob of each of tokens[start:] (its perplexity)

    def as_dict(self) -> dict:
        return {"tokens": self.tokens, "start": self.start, "top_ids": self.top_ids, "top_logprobs": self.top_logprobs,
                "target_logprobs": self.target_logprobs}


@dataclass
class ReferenceFidelity:
    """This model against the reference's teacher on the same text, position by position."""

    kld: list[float]  # KL(reference || this model) at each position
    top1: list[bool]  # this model's most likely token is the reference's
    ppl_ratio: float  # perplexity of tokens[start:] under this model over under the reference


@torch.inference_mode()
def _logprobs(model: Transformer, tokens: list[int], start: int, adapters: AdapterInputs | None) -> torch.Tensor:
    # -> [len(tokens) - start, vocab] float32: the distributions that predicted tokens[start:]
    model.reset_caches()
    hidden = model.hidden(torch.tensor([tokens]), torch.arange(len(tokens)), adapters=adapters)  # [1, T, dim]
    logits = model.head(hidden[0, start - 1 : len(tokens) - 1])  # only the rows we need
    return torch.log_softmax(logits.float(), dim=-1)


def teacher(model: Transformer, prompt_ids: list[int], output_ids: list[int],
            adapters: AdapterInputs | None = None) -> Teacher:
    """The model's top-k along `output_ids` after the prompt: its own output, or a reference text."""
    tokens = prompt_ids + output_ids
    logprobs = _logprobs(model, tokens, len(prompt_ids), adapters)
    top = logprobs.topk(TOP_K, dim=-1)
    target = logprobs.gather(1, torch.tensor(output_ids, dtype=torch.long)[:, None])[:, 0]
    return Teacher(tokens, len(prompt_ids), top.indices.tolist(), top.values.tolist(), target.tolist())


def kl_divergence(model: Transformer, reference: Teacher, adapters: AdapterInputs | None = None) -> float:
    """Mean over positions of KL(reference || this model), top-k plus one bucket for the rest."""
    q = _logprobs(model, reference.tokens, reference.start, adapters)  # [G, vocab]
    return float(_kl(reference, q).mean())


def compare(model: Transformer, reference: Teacher, adapters: AdapterInputs | None = None) -> ReferenceFidelity:
    """KL, top-1 agreement and perplexity ratio of this model against `reference`, on its tokens
    (llama-perplexity's --kl-divergence semantics, with the top-k bound of `_kl`)."""
    q = _logprobs(model, reference.tokens, reference.start, adapters)  # [G, vocab]
    targets = torch.tensor(reference.tokens[reference.start:])[:, None]
    nll = -q.gather(1, targets)[:, 0].mean()
    nll_reference = -torch.tensor(reference.target_logprobs).mean()
    top1 = same_top(q, torch.tensor(reference.top_ids)[:, 0])
    return ReferenceFidelity(_kl(reference, q).tolist(), top1.tolist(), float(torch.exp(nll - nll_reference)))


def same_top(q: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """[G] whether the reference's most likely token is one of q's most likely: half-precision
    logits tie often, and argmax and topk break a tie by different rules, so comparing indices
    would count identical distributions as disagreeing."""
    return q.gather(1, chosen[:, None])[:, 0] == q.max(-1).values


def _kl(reference: Teacher, q: torch.Tensor) -> torch.Tensor:
    """[G] KL(reference || q) per position: the reference's top-k plus one bucket for the rest."""
    ids = torch.tensor(reference.top_ids)  # [G, k]
    lp = torch.tensor(reference.top_logprobs)  # [G, k]
    lq = q.gather(1, ids)  # [G, k]
    p_rest = (1 - lp.exp().sum(-1)).clamp_min(1e-12)  # [G]
    q_rest = (1 - lq.exp().sum(-1)).clamp_min(1e-12)
    return (lp.exp() * (lp - lq)).sum(-1) + p_rest * (p_rest.log() - q_rest.log())
