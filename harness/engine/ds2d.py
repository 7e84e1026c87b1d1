"""DS2D: dynamic, tree-based, draft-model-free self-speculative decoding (batch 1, greedy).

Each step verifies a draft tree below the last committed token (the root, at slot n) in
one forward: node i (priority order) sits at KV slot n + 1 + i with RoPE position n + depth
and attends to every past slot plus its ancestors-or-self. Walking from the root along the
argmax accepts the nodes the greedy decoder would have produced, plus one bonus token (the
argmax after the last accepted node), so the output is greedy's. The accepted nodes' K/V
are then moved to the contiguous slots n + 1, ... in every layer; the rest is overwritten
by later steps.

With forecast tokens (forecast.py) each row also carries k forecast rows, whose outputs draft
the next step: the n-gram matches and the forecasts are merged into one tree.

Exactness: every row goes through the attention call greedy's one-row step makes, over the
same keys in the same order (model.RowKeys), and the fp16 and int4 linears are row-invariant
up to DECODE_ROWS rows, so the accepted rows' logits are greedy's bit for bit; MKL's fp32
GEMM is not row-invariant, so fp32 DS2D is greedy's up to its rounding (tested identical).

KV capacity: the tree and its forecast rows occupy the slots after the root's, at most
DECODE_ROWS in all, so the full budget up to the last token needs max_seq_len >= prompt +
max_new_tokens + DECODE_ROWS - 2. With less (down to greedy's prompt + max_new_tokens, which
is checked) trees are clamped to the free slots, so only the last steps draft less.
"""
import math
import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from harness.engine.drafter import DraftTree, Drafter, NGramDrafter
from harness.engine.forecast import ForecastDrafter, ForecastTokens
from harness.engine.generate import Generation, check_lengths
from harness.engine.model import RowKeys, Transformer
from harness.engine.precision import DECODE_ROWS

BUDGETS = (0, 1, 3, 7, 15, 31, 63)  # draft nodes; verified rows (budget + 1) are powers of two
# one forward of `rows` tokens at KV length 300, fp32, 2 threads, min of 7 on the shared 2-core
# machine: 2-3 rows cost more than 4 (MKL's sgemm, e.g. the LM head: 11 ms at 1 row, 27 at 2, 19 at 4)
PRIOR_MS = {1: 54.3, 2: 90.2, 3: 107.5, 4: 74.2, 6: 72.2, 8: 70.3, 12: 77.5, 16: 84.3, 24: 100.8, 32: 118.0,
            48: 150.6, 64: 176.4}


def prior_ms(rows: int) -> float:
    # PRIOR_MS interpolated linearly in rows
    lo = max(r for r in PRIOR_MS if r <= rows)
    hi = min((r for r in PRIOR_MS if r >= rows), default=lo)
    if hi == lo:
        return PRIOR_MS[lo] * rows / lo
    return PRIOR_MS[lo] + (PRIOR_MS[hi] - PRIOR_MS[lo]) * (rows - lo) / (hi - lo)


@dataclass
class Ema:
    """Exponential moving average, bias-corrected: the first sample is the value."""

    decay: float = 0.9
    value: float = 0.0
    weight: float = 0.0

    def add(self, x: float) -> None:
        self.weight = self.weight * self.decay + 1.0
        self.value += (x - self.value) / self.weight


@dataclass
class RecentMedian:
    """Median of the last `size` samples: one slow step on a busy machine does not count."""

    size: int = 5
    samples: list[float] = field(default_factory=list)

    def add(self, x: float) -> None:
        self.samples = self.samples[1 - self.size :] + [x]

    @property
    def value(self) -> float:
        return statistics.median(self.samples)


@dataclass
class BudgetController:
    """Picks each step's draft budget to maximise expected tokens per millisecond.

    rate(B) = (1 + accepted(B)) / cost(B + 1 rows); B = 0 is a plain step, rate 1 / cost(1).
    With forecast tokens (group = k + 1 rows per verified token) each budget can also carry
    the forecast rows, which draft the next step: rate(B, forecast) = (1 + accepted(B) +
    gain) / cost((B + 1) * group rows). The largest rate wins, so drafting (and forecasting)
    stops as soon as the expected accepted tokens no longer pay for the extra rows, and
    resumes when they do; every `probe_every` steps the rows are carried anyway, to keep
    measuring `gain`. A tree smaller than B is verified whole (cost of its own rows); the
    first step is plain (with forecast rows if any), to measure a cost.

    accepted(B): moving average of how many nodes the first B nodes of a tree would have
    accepted, kept per tree strength (for NGramDrafter, the matched n-gram length). It is
    measured for every budget on every proposed tree, verified or not: greedy's output does
    not depend on the drafts, so once the committed tokens pass a tree, walking them through
    it gives its acceptance exactly ("shadow" evaluation). Plain steps therefore keep
    learning, at the cost of a few list walks. Before its first sample a strength starts
    from the drafter's guess (a chain accepting each node with chance `guess`), worth
    `prior_weight` samples. gain: moving average, over the steps drafted with forecasts, of
    the accepted nodes the forecasts proposed (0 when the step verified none of them: rows
    that buy nothing are not worth carrying), starting from `prior_gain`.

    cost(rows): median of the last 5 measured verify times (forward, argmax, walk, K/V
    moves) per number of rows. A row count without samples is scaled from the nearest
    measured one by the ratio of prior_ms (PRIOR_MS interpolated). Costs change with
    precision, context and load, so they are learned online; a too optimistic prior is
    corrected by one step's sample.
    """

    budgets: tuple[int, ...] = BUDGETS
    group: int = 1  # rows per verified token carrying forecast rows: 1 + k (1: no forecast tokens)
    decay: float = 0.9
    prior_weight: float = 1.0  # of the drafter's guess, in samples
    prior_gain: float = 0.5  # accepted forecast nodes per step, before the first measurement
    probe_every: int = 32
    accepted: dict[tuple[int, int], Ema] = field(default_factory=dict)  # (strength, B)
    gain: Ema = field(init=False)
    steps: int = 0
    cost_ms: dict[int, RecentMedian] = field(default_factory=dict)  # rows -> ms
    pending: list[tuple[DraftTree, int, tuple[int, ...]]] = field(default_factory=list)  # (tree, start, budgets)

    def __post_init__(self) -> None:
        self.gain = Ema(self.decay, self.prior_gain, self.prior_weight)

    def choose(self, tree: DraftTree) -> tuple[int, bool]:
        """-> (draft budget, whether the verified rows carry forecast rows)."""
        self.steps += 1
        forecasting = self.group > 1
        if not self.cost_ms:
            return 0, forecasting  # measure a cost first
        probe = forecasting and self.steps % self.probe_every == 0  # keep measuring the forecasts' gain
        best, best_rate = (0, forecasting), 0.0
        for carry in (True,) if probe else (False, True) if forecasting else (False,):
            group, gain = (self.group, self.gain.value) if carry else (1, 0.0)
            for budget in self.budgets:
                accepted = self.estimate(tree, budget).value if budget and tree else 0.0
                rate = (1.0 + accepted + gain) / self.cost((min(budget, len(tree)) + 1) * group)
                if rate > best_rate:
                    best, best_rate = (budget, carry), rate
                if budget >= len(tree):  # larger budgets verify the same tree
                    break
        return best

    def estimate(self, tree: DraftTree, budget: int) -> Ema:
        key = (tree.strength, budget)
        if key not in self.accepted:  # a chain of `budget` nodes, each kept with chance `guess`
            prior = sum(tree.guess**d for d in range(1, budget + 1))
            self.accepted[key] = Ema(self.decay, prior, self.prior_weight)
        return self.accepted[key]

    def cost(self, rows: int) -> float:
        if rows in self.cost_ms:
            return self.cost_ms[rows].value
        if not self.cost_ms:
            return prior_ms(rows)
        near = min(self.cost_ms, key=lambda r: abs(math.log(r / rows)))
        return self.cost_ms[near].value * prior_ms(rows) / prior_ms(near)

    def observe_cost(self, rows: int, ms: float) -> None:
        self.cost_ms.setdefault(rows, RecentMedian()).add(ms)

    def shadow(self, tree: DraftTree, start: int) -> None:
        if tree:
            self.pending.append((tree, start, self.budgets[1:]))

    def resolve(self, context: list[int]) -> None:
        """Score each budget of the pending trees as soon as the committed tokens decide it.

        Per budget, not per tree: deep matches take longer to decide, and waiting for the
        whole tree would hear of failures first and bias the averages low.
        """
        still = []
        for tree, start, budgets in self.pending:
            path, final = tree.walk(context[start:])
            undecided = []
            for budget in budgets:
                kept = [node for node in path if node < budget]  # a prefix: ancestors come first
                end = kept[-1] + 1 if kept else 0  # children row of the last kept node
                if final or len(kept) < len(path) or min(tree.children[end].values(), default=budget) >= budget:
                    self.estimate(tree, budget).add(len(kept))
                else:
                    undecided.append(budget)
            if undecided:
                still.append((tree, start, tuple(undecided)))
        self.pending = still

    def observe_gain(self, tree: DraftTree, path: list[int]) -> None:
        """After a step drafted with forecasts (the last step carried their rows): what they bought."""
        self.gain.add(sum(tree.forecast[node] for node in path))


@dataclass
class StepLog:
    steps: int = 1  # model forwards; the prefill yields the first token
    draft_steps: int = 0
    drafted_depth: int = 0  # sum of draft tree depths over draft steps
    accepted: int = 0
    accepted_forecast: int = 0  # accepted nodes the forecast tokens proposed
    forecast_steps: int = 0  # decode steps whose rows carried forecast rows
    reached: list[int] = field(default_factory=list)  # [d - 1]: draft steps accepting >= d nodes
    nodes: int = 0
    draft_s: float = 0.0
    verify_s: float = 0.0

    def add(self, tree: DraftTree, path: list[int], forecast_rows: bool) -> None:
        self.steps += 1
        self.forecast_steps += forecast_rows
        self.nodes += len(tree)
        if len(tree):
            self.draft_steps += 1
            self.drafted_depth += max(tree.depths)
            self.accepted += len(path)
            self.accepted_forecast += sum(tree.forecast[i] for i in path) if tree.forecast else 0
            self.reached += [0] * (max(tree.depths) - len(self.reached))
            for d in range(len(path)):
                self.reached[d] += 1

    def stats(self, generated: int) -> dict[str, float | list[float]]:
        decode_steps = self.steps - 1
        return {
            "steps": self.steps,
            "tokens_per_step": generated / self.steps,
            "acceptance_rate": self.accepted / max(self.drafted_depth, 1),
            "acceptance_by_depth": [r / self.draft_steps for r in self.reached],
            "accepted_per_step": self.accepted / max(decode_steps, 1),
            "forecast_share": self.accepted_forecast / max(self.accepted, 1),
            "forecast_step_share": self.forecast_steps / max(decode_steps, 1),
            "draft_ms": self.draft_s * 1e3,
            "verify_ms": self.verify_s * 1e3,
            "nodes_per_step": self.nodes / max(decode_steps, 1),
            "plain_step_share": (decode_steps - self.draft_steps) / max(decode_steps, 1),
        }


@torch.inference_mode()
def generate(model: Transformer, prompt_ids: list[int], max_new_tokens: int, eos_id: int,
             drafter: Drafter | None = None, controller: BudgetController | None = None) -> Generation:
    """Greedy decoding accelerated by verified draft trees; the tokens are greedy's.

    `drafter` defaults to a fresh NGramDrafter and `controller` to a fresh BudgetController;
    pass a controller to carry its learned acceptance and costs across requests. With a
    ForecastDrafter a step whose rows carry forecast rows (the controller decides) costs
    (nodes + 1) * (k + 1) rows (the controller's `group` must be k + 1), at most DECODE_ROWS:
    beyond, the engine's fp16 kernels are no longer row-invariant.

    stats: steps (model forwards, prefill included, so tokens_per_step * steps = tokens);
    acceptance_rate = accepted draft nodes / sum of verified trees' depths (the most each
    step could accept; for chain drafts, the usual accepted / drafted); acceptance_by_depth
    [d - 1] = share of draft steps whose accepted path reached depth d; accepted_per_step =
    accepted draft nodes per decode step; forecast_share = share of the accepted nodes that
    the forecast tokens proposed (the rest: n-gram matches only); forecast_step_share = decode
    steps that carried forecast rows; draft_ms and verify_ms
    totals (drafting + controller, forward + walk + K/V moves); nodes_per_step = draft nodes
    verified per decode step; plain_step_share = decode steps without draft.
    """
    check_lengths(model, len(prompt_ids), max_new_tokens)
    drafter = drafter or NGramDrafter()
    forecast = drafter.tokens if isinstance(drafter, ForecastDrafter) else None
    group = 1 + (0 if forecast is None else forecast.k)  # rows per verified token
    controller = controller or BudgetController(group=group)
    if controller.group != group:
        raise ValueError(f"the controller prices {controller.group} rows per verified token, the drafter needs {group}")
    controller.pending.clear()
    model.reset_caches()
    start = time.perf_counter()
    logits = model.head(model.hidden(torch.tensor([prompt_ids]), torch.arange(len(prompt_ids)))[:, -1])  # [1, V]
    context = prompt_ids + [int(logits.argmax(-1))]
    times = [time.perf_counter() - start]
    log = StepLog()
    while context[-1] != eos_id and len(context) - len(prompt_ids) < max_new_tokens:
        t0 = time.perf_counter()
        controller.resolve(context)
        n = len(context) - 1  # slot and position of the root
        left = max_new_tokens - (len(context) - len(prompt_ids))
        free = model.max_seq_len - n  # slots from the root's on
        room = min(free, DECODE_ROWS) // group - 1  # nodes whose rows (with forecast rows) fit
        tree = drafter.propose(context, controller.budgets[-1]).prune(room, left - 1)
        controller.shadow(tree, len(context))
        budget, carry = controller.choose(tree)
        forecast_drafted = any(tree.forecast)
        tree = tree.prune(budget, left - 1)
        step_forecast = forecast if carry and free >= group else None  # the last slots take no forecast rows
        t1 = time.perf_counter()
        path, bonus, ahead = verify(model, context[-1], n, tree, step_forecast)
        t2 = time.perf_counter()
        rows = (len(tree) + 1) * (group if step_forecast is not None else 1)
        controller.observe_cost(rows, (t2 - t1) * 1e3)
        new = [tree.tokens[i] for i in path] + [bonus]
        new = new[: new.index(eos_id) + 1] if eos_id in new else new
        context += new[:left]
        times += [t2 - start] * len(new[:left])
        if forecast is not None:
            drafter.observe(ahead, len(context))
        if forecast_drafted:
            controller.observe_gain(tree, path)
        log.add(tree, path, step_forecast is not None)
        log.draft_s += t1 - t0
        log.verify_s += t2 - t1
    ids = context[len(prompt_ids) :]
    return Generation(ids, times, len(prompt_ids), log.stats(len(ids)))


def verify(model: Transformer, root: int, n: int, tree: DraftTree,
           forecast: ForecastTokens | None = None) -> tuple[list[int], int, Tensor | None]:
    """One forward over root + tree (+ forecast tokens); -> (accepted nodes, bonus token, forecast logits).

    Each row attends the past and its ancestors-or-self in depth order, the keys greedy's
    step at that position attends, through the same attention call (model.RowKeys): with
    row-invariant linears (fp16, int4; not MKL's fp32 GEMM) the accepted rows' logits are
    bit-identical to greedy's. Keeps the accepted nodes' K/V.

    forecast: after each of the T + 1 rows its own k forecast tokens
    (slots after the tree's, RoPE positions row's + 1 .. + k, attending the row's keys and
    their group's earlier forecast tokens). Returns the [k, vocab] forecast logits of the
    last accepted row: they follow the bonus token.
    """
    rows, k = len(tree) + 1, 0 if forecast is None else forecast.k
    depths = [0, *tree.depths]
    tails = tree_tails(tree, n)
    positions = [n + d for d in depths]
    for row in range(rows * (k > 0)):
        first = n + rows + row * k  # slot of the row's forecast token 1
        positions += [n + depths[row] + i for i in range(1, k + 1)]
        tails += [tails[row] + list(range(first, first + i)) for i in range(1, k + 1)]
    extra = None if forecast is None else forecast.rows(rows)
    logits = model(torch.tensor([[root, *tree.tokens]]), torch.tensor(positions),
                   cache_pos=torch.arange(n, n + rows * (k + 1)), keys=RowKeys.after(n, tails), extra=extra)[0]
    best = logits[:rows].argmax(-1).tolist()  # [T + 1]
    path: list[int] = []
    row = 0  # the root's row; node i is row i + 1
    while (child := tree.children[row].get(best[row])) is not None:
        path.append(child)
        row = child + 1
    keep_path_kv(model, n, path)
    ahead = None if forecast is None else logits[rows + row * k : rows + (row + 1) * k]
    return path, best[row], ahead


def tree_tails(tree: DraftTree, n: int) -> list[list[int]]:
    """Per row, the slots after 0 .. n - 1 it attends: the root (slot n) n; node i (slot n + 1 + i) its path."""
    tails: list[list[int]] = [[n]]
    for i, p in enumerate(tree.parents):
        tails.append(tails[p + 1] + [n + 1 + i])
    return tails


def keep_path_kv(model: Transformer, n: int, path: list[int]) -> None:
    # accepted node i was written at slot n + 1 + i; move it to n + 1 + its depth - 1
    src = [n + 1 + i for i in path]
    dst = list(range(n + 1, n + 1 + len(path)))
    if src == dst:
        return
    src_t, dst_t = torch.tensor(src), torch.tensor(dst)
    for layer in model.layers:
        for cache in (layer.attention.kv_cache.k_cache, layer.attention.kv_cache.v_cache):  # [B, H_kv, S, D]
            cache.index_copy_(2, dst_t, cache.index_select(2, src_t))
