"""DS2D on the real SmolLM2: tree rows bit-identical to greedy's steps, stats, drafter and controller.

Greedy's tokens on 30 prompts in every precision: test_ds2d_lossless.py."""
import json
import pathlib

import pytest
import torch

from harness.engine import Engine, Generation, load_engine
from harness.engine.drafter import DraftTree, NGramDrafter
from harness.engine.ds2d import BudgetController, generate, tree_tails, verify
from harness.engine.generate import decode_step
from harness.engine.model import RowKeys

MODEL = "smollm2-135m-instruct"
PAPER = pathlib.Path(__file__).parent.parent / "fixtures" / "prompts" / "paper.jsonl"
KINDS = ("summarize", "rewrite", "qa", "code", "open")
MAX_NEW = 24


@pytest.fixture(scope="module")
def engine() -> Engine:
    return load_engine(MODEL, "fp32", max_seq_len=1024)


@pytest.fixture(scope="module")
def runs(engine: Engine) -> dict[str, tuple[Generation, Generation]]:
    """(greedy, DS2D) for the first 2 prompts of each kind, chat template, 24 new tokens."""
    prompts = [json.loads(line) for line in PAPER.read_text().splitlines()]
    chosen = [p for kind in KINDS for p in [p for p in prompts if p["kind"] == kind][:2]]
    out = {}
    for p in chosen:
        ids = engine.tokenizer.encode(engine.tokenizer.chat_prompt(p["prompt"]))
        out[p["id"]] = engine.generate(ids, MAX_NEW), generate(engine.model, ids, MAX_NEW, engine.tokenizer.eos_id)
    return out


@pytest.mark.parametrize("precision", ["fp16", "int4"])
def test_tree_rows_are_bit_identical_to_greedy_steps(precision: str) -> None:
    # the arithmetic, not only the argmax: a chain of greedy's next tokens plus a side branch,
    # verified in one forward, gives each path row exactly the logits of greedy's step there
    engine = load_engine(MODEL, precision, max_seq_len=256)
    model, tok = engine.model, engine.tokenizer
    prompt = tok.encode(tok.chat_prompt("Summarize: the cat sat on the mat all day and did not move."))
    n = len(prompt)
    with torch.inference_mode():
        model.reset_caches()
        tokens = [int(model(torch.tensor([prompt]), torch.arange(n))[0, -1].argmax())]
        steps = []
        for pos in range(n, n + 6):
            steps.append(decode_step(model, torch.tensor([[tokens[-1]]]), torch.tensor([pos]), pos + 1)[0])
            tokens.append(int(steps[-1].argmax()))
        side = tok.encode(" banana split")
        tree = DraftTree(tokens[1:6] + side, [-1, 0, 1, 2, 3, -1, 5])
        model.reset_caches()
        model(torch.tensor([prompt]), torch.arange(n))
        rows = model(torch.tensor([[tokens[0], *tree.tokens]]), n + torch.tensor([0, *tree.depths]),
                     cache_pos=torch.arange(n, n + len(tree) + 1), keys=RowKeys.after(n, tree_tails(tree, n)))[0]
    for row in range(6):  # the root and the five chain nodes
        assert torch.equal(rows[row], steps[row]), f"row {row} differs from greedy's step"


def test_stats_are_consistent(runs: dict[str, tuple[Generation, Generation]]) -> None:
    for pid, (_, gen) in runs.items():
        s = gen.stats
        assert s["tokens_per_step"] * s["steps"] == pytest.approx(len(gen.token_ids)), pid
        assert 0 <= s["plain_step_share"] <= 1 and 0 <= s["acceptance_rate"] <= 1, pid
        by_depth = s["acceptance_by_depth"]
        assert all(1 >= a >= b >= 0 for a, b in zip(by_depth, by_depth[1:] + [0])), pid
        assert s["draft_ms"] > 0 and s["verify_ms"] > 0 and s["nodes_per_step"] >= 0, pid
        assert len(gen.token_times) == len(gen.token_ids) <= MAX_NEW, pid
        assert gen.token_times == sorted(gen.token_times) and gen.token_times[0] > 0, pid
        steps_with_tokens = len(set(gen.token_times))  # tokens of one step share its timestamp
        assert steps_with_tokens == s["steps"], pid


def test_max_new_tokens_and_small_cache_are_respected(engine: Engine) -> None:
    # a summary that copies its source: long accepted drafts must be cut at max_new_tokens,
    # and a cache of exactly prompt + max_new_tokens (as greedy needs) clamps the tree
    text = json.loads(PAPER.read_text().splitlines()[2])["prompt"]
    ids = engine.tokenizer.encode(engine.tokenizer.chat_prompt(text))
    greedy = engine.generate(ids, 30).token_ids
    try:
        for max_new in (1, 2, 7, 30):
            engine.reserve(len(ids) + max_new)
            gen = generate(engine.model, ids, max_new, engine.tokenizer.eos_id)
            assert gen.token_ids == greedy[:max_new]
    finally:
        engine.reserve(1024)
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(engine.model, ids, 1024, engine.tokenizer.eos_id)


def test_tree_forward_matches_each_path_run_alone(engine: Engine) -> None:
    prompt = engine.tokenizer.encode(engine.tokenizer.chat_prompt("Name three colours."))
    follow = engine.generate(prompt, 3).token_ids  # greedy g1 g2 g3
    root, g1, g2 = follow[0], follow[1], follow[2]
    other = engine.tokenizer.encode(" banana split")  # a branch greedy does not take
    # nodes: 0 = other[0], 1 = g1, 2 = other[1] (child of 0), 3 = g2 (child of 1)
    tree = DraftTree([other[0], g1, other[1], g2], [-1, -1, 0, 1])
    n = len(prompt)
    model = engine.model
    model.reset_caches()
    with torch.inference_mode():
        model(torch.tensor([prompt]), torch.arange(n))
        tokens = torch.tensor([[root, *tree.tokens]])
        positions = n + torch.tensor([0, *tree.depths])
        logits = model(tokens, positions, cache_pos=torch.arange(n, n + 5), keys=RowKeys.after(n, tree_tails(tree, n)))[0]
    rows = {"root": 0, "other0": 1, "g1": 2, "other1": 3, "g2": 4}
    alone_a = engine.logits(prompt + [root, other[0], other[1]])[n:]  # root, other0, other1
    alone_b = engine.logits(prompt + [root, g1, g2])[n:]  # root, g1, g2
    for row, ref in [("root", alone_a[0]), ("other0", alone_a[1]), ("other1", alone_a[2]),
                     ("g1", alone_b[1]), ("g2", alone_b[2])]:
        torch.testing.assert_close(logits[rows[row]], ref, atol=1e-4, rtol=1e-4, msg=row)


def test_verify_accepts_the_greedy_branch_and_keeps_its_kv(engine: Engine) -> None:
    prompt = engine.tokenizer.encode(engine.tokenizer.chat_prompt("Name three colours."))
    root, g1, g2, g3 = engine.generate(prompt, 4).token_ids
    other = engine.tokenizer.encode(" banana split")
    tree = DraftTree([other[0], g1, other[1], g2], [-1, -1, 0, 1])
    model, n = engine.model, len(prompt)
    model.reset_caches()
    with torch.inference_mode():
        model(torch.tensor([prompt]), torch.arange(n))
        path, bonus, _ = verify(model, root, n, tree)
        tree_kv = [(layer.attention.kv_cache.k_cache[0, :, n : n + 3].clone()) for layer in model.layers]
    assert (path, bonus) == ([1, 3], g3)
    engine.logits(prompt + [root, g1, g2])  # sequential reference fills slots n .. n + 2
    for layer, kv in zip(model.layers, tree_kv):
        torch.testing.assert_close(kv, layer.attention.kv_cache.k_cache[0, :, n : n + 3], atol=1e-4, rtol=1e-4)


def test_drafter_builds_a_trie_from_repeated_ngrams() -> None:
    context = [1, 2, 3, 4, 5, 9, 1, 2, 3, 4, 6, 9, 1, 2, 3]
    tree = NGramDrafter(max_depth=3).propose(context, budget=16)
    # [9, 1, 2, 3] matched once (-> 4 6 9), [1, 2, 3] once more (-> 4 5 9); 4 is shared
    # the longer match's branch ranks first; parents come before their children
    assert (tree.tokens, tree.parents, tree.strength) == ([4, 6, 9, 5, 9], [-1, 0, 1, 0, 3], 4)
    assert tree.depths == [1, 2, 3, 2, 3]
    assert tree.walk([4, 6, 9, 7]) == ([0, 1, 2], True)
    assert tree.walk([4, 5]) == ([0, 3], False)  # node 3 has a child: more tokens could match


def test_drafter_respects_budget_and_ranks_nodes() -> None:
    context = [7, 1, 2, 3, 8, 1, 2, 4, 9, 1, 2, 5, 6, 1, 2]
    drafter = NGramDrafter()
    full = drafter.propose(context, budget=63)
    assert len(full) > 4
    for budget in range(len(full) + 2):
        tree = drafter.propose(context, budget)
        assert len(tree) == min(budget, len(full))
        assert (tree.tokens, tree.parents) == (full.tokens[:budget], full.parents[:budget])


def test_drafter_is_empty_without_matches_and_indexes_incrementally() -> None:
    assert len(NGramDrafter().propose([5, 6, 7, 8, 9], budget=8)) == 0
    assert NGramDrafter().propose([5, 6, 7, 8, 9], budget=8).strength == 0
    context = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4]
    growing = NGramDrafter()
    for end in range(1, len(context) + 1):
        assert growing.propose(context[:end], 10) == NGramDrafter().propose(context[:end], 10)
    assert growing.propose([6, 4, 6], 10) == NGramDrafter().propose([6, 4, 6], 10)  # not an extension


def test_controller_goes_plain_when_drafts_fail_and_drafts_when_they_match() -> None:
    step_ms = {1: 30.0, 2: 33.0, 4: 45.0}  # a fake clock: verify time by rows

    def run(matching: bool) -> list[int]:
        controller, context, budgets = BudgetController(), [0], []
        controller.observe_cost(1, step_ms[1])  # a plain step, as when the drafter finds nothing
        for step in range(12):
            tree = DraftTree([10 + step, 11 + step, 12 + step], [-1, 0, 1], strength=2, guess=0.5)
            controller.shadow(tree, len(context))
            budget, carry = controller.choose(tree)
            assert not carry  # no forecast tokens: nothing to carry
            budgets.append(budget)
            context += [10 + step, 11 + step, 12 + step, 99] if matching else [99]
            rows = min(budgets[-1], len(tree)) + 1
            controller.observe_cost(rows, step_ms[rows])
            controller.resolve(context)
        return budgets

    failing, matching = run(matching=False), run(matching=True)
    assert failing[0] > 0 and failing[-3:] == [0, 0, 0]  # the prior tries, the samples stop it
    assert matching[-1] == 3


def test_controller_carries_forecast_rows_only_while_their_gain_pays() -> None:
    step_ms = {1: 30.0, 2: 36.0, 4: 45.0}  # a fake clock: verify time by rows (8 rows: 60)

    def run(forecasts_right: bool) -> list[bool]:
        controller, context, carried = BudgetController(group=4, probe_every=1000), [0], []
        controller.observe_cost(1, step_ms[1])
        for step in range(12):
            tree = DraftTree([10 + step], [-1], strength=1, guess=0.1, forecast=[True])  # as drafted from forecasts
            controller.shadow(tree, len(context))
            budget, carry = controller.choose(tree)
            carried.append(carry)
            verified = tree.prune(budget, 1)
            controller.observe_gain(verified, [0] if verified and forecasts_right else [])
            context += [10 + step if forecasts_right else 99, 98]
            rows = (len(verified) + 1) * (4 if carry else 1)
            controller.observe_cost(rows, step_ms.get(rows, 60.0))
            controller.resolve(context)
        return carried

    assert run(forecasts_right=False)[-3:] == [False] * 3  # the forecasts never match: no forecast rows
    assert run(forecasts_right=True)[-3:] == [True] * 3  # one accepted token a step pays for 3 rows
