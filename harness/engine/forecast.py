"""Forecast tokens: k learned input embeddings with which the frozen model drafts its own next tokens.

BiTA's idea in its smallest form (prompt tuning, no draft model): after a token x_t, forecast
token i (i = 1..k) sits at RoPE position t + i, attends x_0 .. x_t and forecast tokens 1 .. i,
and its output is trained to be x_{t+i+1}, while x_t's own output is x_{t+1}. Appended to
every node of a DS2D tree in the verify forward, the group of the last accepted node proposes
the k tokens after the bonus token: the next step's draft, from the same pass. Only the
forecast tokens' input embeddings and per-block residual additions are learned, by self-distillation on the model's own greedy outputs
(fixtures/train_forecast.py); the model is untouched, and the forecast rows' K/V sit in slots
that no committed token attends.
"""
import heapq
import pathlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from harness.engine.drafter import DraftTree, NGramDrafter
from harness.engine.model import ExtraRows, ModelConfig, Transformer


@dataclass
class ForecastTokens:
    """k forecast tokens: input embeddings [k, dim], and per block a vector added to each one's
    residual stream before it [n_layer, k, dim] (deep prompt tuning: prompt tuning's input
    embeddings alone gave 21 % held-out top-1 at forecast 1 after an epoch; see train_log.json)."""

    embeddings: Tensor
    layers: Tensor

    @property
    def k(self) -> int:
        return self.embeddings.shape[0]

    def rows(self, groups: int) -> ExtraRows:
        """`groups` copies of the k tokens, one after the other."""
        return ExtraRows(self.embeddings.repeat(groups, 1), self.layers.repeat(1, groups, 1))

    def save(self, path: pathlib.Path, metadata: dict[str, str]) -> None:
        tensors = {"embeddings": self.embeddings, "layers": self.layers}
        save_file({name: t.detach().contiguous() for name, t in tensors.items()}, str(path), metadata)

    @classmethod
    def load(cls, path: pathlib.Path, config: ModelConfig) -> "ForecastTokens":
        tensors = {name: t.float() for name, t in load_file(str(path)).items()}
        k = tensors["embeddings"].shape[0]
        for name, shape in (("embeddings", (k, config.dim)), ("layers", (config.n_layer, k, config.dim))):
            if tuple(tensors[name].shape) != shape:
                raise ValueError(f"{path}: forecast {name} of shape {tuple(tensors[name].shape)}, the model needs {shape}")
        return cls(tensors["embeddings"], tensors["layers"])


def forecast_rows(model: Transformer, seq: list[int], anchors: list[int], forecast: ForecastTokens) -> tuple[Tensor, Tensor]:
    """Hidden states [A * k, dim] of forecast tokens 1 .. k after seq[t] for t in anchors, and their
    targets [A * k]: seq[t + i + 1], or -100 past the end.

    seq: prompt + the model's greedy output. The sequence runs once without
    gradient into a fresh cache; the forecast rows (a group per anchor) attend it through a mask.
    """
    k, length = forecast.k, len(seq)
    rows = len(anchors) * k
    model.setup_caches(1, length + rows, torch.float32)
    with torch.no_grad():
        model.hidden(torch.tensor([seq]), torch.arange(length))
    positions = torch.tensor([t + i for t in anchors for i in range(1, k + 1)])  # [A * k]
    mask = torch.zeros(rows, length + rows, dtype=torch.bool)
    targets = torch.full((rows,), -100)
    for g, t in enumerate(anchors):
        for i in range(1, k + 1):
            row = g * k + i - 1
            mask[row, : t + 1] = True
            mask[row, length + g * k : length + row + 1] = True  # its group's forecast tokens 1 .. i
            if t + i + 1 < length:
                targets[row] = seq[t + i + 1]
    h = model.hidden(torch.zeros(1, 0, dtype=torch.long), positions, cache_pos=torch.arange(length, length + rows),
                     mask=mask, extra=forecast.rows(len(anchors)))[0]
    return h, targets


def forecast_loss(model: Transformer, seq: list[int], anchors: list[int], forecast: ForecastTokens) -> Tensor:
    """Mean cross-entropy of the forecast rows (forecast_rows) against their targets."""
    h, targets = forecast_rows(model, seq, anchors, forecast)
    keep = targets != -100
    return F.cross_entropy(model.head(h[keep]), targets[keep])


@dataclass
class ForecastDrafter:
    """Drafts from the forecast group of the last verified step, merged with n-gram matches.

    The forecast tree: depth d's candidates are the `width` most likely tokens of forecast d's
    distribution, a node's score the product of its path's probabilities (forecast d does not
    see the choice at depth d - 1, so every node of a depth has the same candidates below it).
    N-gram continuations (NGramDrafter) join the same trie with score guess ** depth (their
    prior); a node keeps the larger score and remembers whether the forecast proposed it. The
    `budget` best nodes form the tree (scores only fall along a path, so parents come first).
    """

    tokens: ForecastTokens
    width: int = 4
    ngram: NGramDrafter = field(default_factory=NGramDrafter)
    probs: Tensor | None = None  # [k, V] from the last verify, for the context it ended with
    context_len: int = -1  # len(context) those probabilities follow

    def observe(self, logits: Tensor | None, context_len: int) -> None:
        self.probs = None if logits is None else torch.softmax(logits.float(), dim=-1)
        self.context_len = context_len

    def propose(self, context: list[int], budget: int) -> DraftTree:
        ngram = self.ngram.propose(context, budget)
        paths: list[tuple[float, list[int], bool]] = []  # (score, tokens from the root, forecast's)
        for i in range(len(ngram)):
            paths.append((ngram.guess ** ngram.depths[i], path_tokens(ngram, i), False))
        confidence = 0
        if self.probs is not None and self.context_len == len(context):
            top = self.probs.topk(self.width, dim=-1)  # [k, width]
            confidence = int(10 * float(top.values[0, 0]))
            paths += best_paths(top.values.tolist(), top.indices.tolist(), budget)
        return merge(paths, budget, strength=100 * ngram.strength + confidence,
                     guess=max(ngram.guess, confidence / 10))


def path_tokens(tree: DraftTree, node: int) -> list[int]:
    out = []
    while node >= 0:
        out.append(tree.tokens[node])
        node = tree.parents[node]
    return out[::-1]


def best_paths(probs: list[list[float]], tokens: list[list[int]], budget: int) -> list[tuple[float, list[int], bool]]:
    # best-first over the product tree: a node at depth d (0-based ranks `ranks`) scores prod probs[j][ranks[j]]
    out: list[tuple[float, list[int], bool]] = []
    heap = [(-probs[0][r], (r,)) for r in range(len(probs[0]))]
    heapq.heapify(heap)
    while heap and len(out) < budget:
        neg, ranks = heapq.heappop(heap)
        out.append((-neg, [tokens[d][r] for d, r in enumerate(ranks)], True))
        if len(ranks) < len(probs):
            for r in range(len(probs[len(ranks)])):
                heapq.heappush(heap, (neg * probs[len(ranks)][r], ranks + (r,)))
    return out


def merge(paths: list[tuple[float, list[int], bool]], budget: int, strength: int, guess: float) -> DraftTree:
    """One trie of the given root-to-node paths, its `budget` best nodes in score order."""
    index: dict[tuple[int, ...], int] = {}
    score: list[float] = []
    forecast: list[bool] = []
    for s, tokens, from_forecast in paths:
        key = tuple(tokens)
        if key not in index:
            index[key] = len(score)
            score.append(s)
            forecast.append(from_forecast)
        else:
            i = index[key]
            score[i], forecast[i] = max(score[i], s), forecast[i] or from_forecast
    keys = list(index)
    # every prefix of a path is a path too, scoring at least as much: on ties the shorter first,
    # so the best `budget` nodes are a tree in priority order, parents before children
    kept = sorted(range(len(keys)), key=lambda i: (-score[i], len(keys[i]), i))[:budget]
    if not kept:
        return DraftTree()
    new = {keys[i]: j for j, i in enumerate(kept)}
    parents = [-1 if len(keys[i]) == 1 else new[keys[i][:-1]] for i in kept]
    return DraftTree([keys[i][-1] for i in kept], parents, strength, guess, [forecast[i] for i in kept])
