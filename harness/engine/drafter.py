"""Draft token trees for self-speculative decoding, and the n-gram (prompt lookup) drafter."""
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from itertools import islice
from typing import Protocol


@dataclass(frozen=True)
class DraftTree:
    """Guessed continuations of a context, as a tree below an implicit root (its last token).

    Nodes are in priority order, every parent before its children, so the first B nodes are
    the best tree of B nodes. Siblings carry distinct tokens.
    """

    tokens: list[int] = field(default_factory=list)  # [T]
    parents: list[int] = field(default_factory=list)  # [T] index of the parent node, -1 = root
    strength: int = 0  # drafts of equal strength are expected to be accepted alike (0: no draft)
    guess: float = 0.0  # the drafter's prior chance that a node is accepted when its parent is
    forecast: list[bool] = field(default_factory=list)  # [T] proposed by forecast tokens (empty: none was)

    def __len__(self) -> int:
        return len(self.tokens)

    @cached_property
    def depths(self) -> list[int]:
        # [T], children of the root have depth 1
        depths: list[int] = []
        for p in self.parents:
            depths.append(1 if p < 0 else depths[p] + 1)
        return depths

    @cached_property
    def children(self) -> list[dict[int, int]]:
        # [T + 1] token -> node index; entry 0 is the root, entry i + 1 is node i
        children: list[dict[int, int]] = [{} for _ in range(len(self) + 1)]
        for i, (token, p) in enumerate(zip(self.tokens, self.parents)):
            children[p + 1][token] = i
        return children

    def walk(self, continuation: list[int]) -> tuple[list[int], bool]:
        """Nodes matching a prefix of `continuation`, and whether the match is final.

        Not final when the continuation ran out while the last node still has children.
        """
        path: list[int] = []
        row = 0  # children row of the last matched node (0: the root)
        for token in continuation:
            node = self.children[row].get(token)
            if node is None:
                return path, True
            path.append(node)
            row = node + 1
        return path, not self.children[row]

    def prune(self, max_nodes: int, max_depth: int) -> "DraftTree":
        """The first `max_nodes` nodes, without those deeper than `max_depth`."""
        keep = [i for i in range(min(max_nodes, len(self))) if self.depths[i] <= max_depth]
        if len(keep) == len(self):
            return self
        new = {old: i for i, old in enumerate(keep)}
        parents = [-1 if self.parents[i] < 0 else new[self.parents[i]] for i in keep]
        if not keep:
            return DraftTree()
        forecast = [self.forecast[i] for i in keep] if self.forecast else []
        return DraftTree([self.tokens[i] for i in keep], parents, self.strength, self.guess, forecast)


class Drafter(Protocol):
    """Proposes a tree of at most `budget` nodes to follow `context` (prompt + generated, batch 1).

    NGramDrafter looks the context up; forecast.ForecastDrafter also reads the forecast
    tokens' distributions from the last verify forward (given to it by ds2d.generate).
    """

    def propose(self, context: list[int], budget: int) -> DraftTree: ...


@dataclass
class NGramDrafter:
    """Prompt lookup: what followed earlier occurrences of the context's last n tokens.

    For n from `max_n` down to `min_n`, the `matches_per_n` most recent earlier occurrences
    of the last n tokens each give a candidate continuation of up to `max_depth` tokens
    (a position matched at a larger n is not counted again). Candidates are merged into a
    trie; a node scores sum(weight(n) over candidates through it) * decay ** depth, with
    weight(n) = 2 ** n, and the `budget` best nodes are kept (a parent always scores at
    least as much as its child, so they form a tree). `strength` is the largest n matched,
    and `guess` = n / (n + 1) a rough prior that the controller soon replaces by measurement.

    The index of n-gram positions grows with the context: a context that extends the last
    one is indexed only for its new tokens.
    """

    max_n: int = 4
    min_n: int = 1
    matches_per_n: int = 4
    max_depth: int = 16
    decay: float = 0.8
    _seen: list[int] = field(default_factory=list, init=False, repr=False)
    _index: dict[tuple[int, ...], list[int]] = field(default_factory=lambda: defaultdict(list), init=False, repr=False)

    def propose(self, context: list[int], budget: int) -> DraftTree:
        self._update_index(context)
        candidates: list[tuple[int, list[int]]] = []  # (n, continuation)
        taken: set[int] = set()
        strength = 0
        for n in range(min(self.max_n, len(context) - 1), self.min_n - 1, -1):
            starts = reversed(self._index.get(tuple(context[-n:]), ()))  # most recent first
            fresh = list(islice((s for s in starts if s < len(context) and s not in taken), self.matches_per_n))
            strength = strength or (n if fresh else 0)
            taken.update(fresh)
            candidates += [(n, context[s : s + self.max_depth]) for s in fresh]
        return self._best_tree(candidates, budget, strength)

    def _update_index(self, context: list[int]) -> None:
        if context[: len(self._seen)] != self._seen:
            self._seen, self._index = [], defaultdict(list)
        for end in range(len(self._seen) + 1, len(context) + 1):  # n-grams ending before `end`
            for n in range(self.min_n, min(self.max_n, end) + 1):
                self._index[tuple(context[end - n : end])].append(end)
        self._seen = context[:]

    def _best_tree(self, candidates: list[tuple[int, list[int]]], budget: int, strength: int) -> DraftTree:
        tokens: list[int] = []
        parents: list[int] = []
        score: list[float] = []
        children: list[dict[int, int]] = [{}]  # [node + 1] token -> node, entry 0 the root
        for n, continuation in candidates:
            node = -1
            for depth, token in enumerate(continuation, start=1):
                child = children[node + 1].get(token)
                if child is None:
                    child = children[node + 1][token] = len(tokens)
                    tokens.append(token)
                    parents.append(node)
                    score.append(0.0)
                    children.append({})
                score[child] += 2.0**n * self.decay**depth
                node = child
        keep = sorted(range(len(tokens)), key=lambda i: (-score[i], i))[:budget]  # parents score more
        new = {old: i for i, old in enumerate(keep)}
        parents = [-1 if parents[i] < 0 else new[parents[i]] for i in keep]
        if not keep:
            return DraftTree()
        return DraftTree([tokens[i] for i in keep], parents, strength, strength / (strength + 1))
