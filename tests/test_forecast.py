"""Forecast tokens: the drafted tree, the training rows, and verify's forecast rows on the real SmolLM2."""
import pathlib

import pytest
import torch

from harness.engine import Engine, load_engine
from harness.engine.drafter import DraftTree, NGramDrafter
from harness.engine.ds2d import BudgetController, generate, verify
from harness.engine.forecast import ForecastDrafter, ForecastTokens, best_paths, forecast_rows, merge

MODEL = "smollm2-135m-instruct"
TRAINED = pathlib.Path(__file__).parent.parent / "fixtures" / "forecast" / f"{MODEL}.safetensors"


def test_best_paths_expand_the_product_tree_best_first() -> None:
    probs = [[0.6, 0.25], [0.5, 0.4], [0.9, 0.1]]  # per depth, the top candidates' probabilities
    tokens = [[10, 11], [20, 21], [30, 31]]
    paths = best_paths(probs, tokens, budget=5)
    assert [p[1] for p in paths] == [[10], [10, 20], [10, 20, 30], [11], [10, 21]]
    assert [p[0] for p in paths] == pytest.approx([0.6, 0.3, 0.27, 0.25, 0.24])
    assert all(p[2] for p in paths)


def test_merge_keeps_parents_first_and_flags_forecast_nodes() -> None:
    paths = [(0.9, [5], False), (0.8, [5, 6], False), (0.7, [5], True), (0.5, [7], True), (0.4, [5, 8], True)]
    tree = merge(paths, budget=3, strength=3, guess=0.5)
    assert (tree.tokens, tree.parents) == ([5, 6, 7], [-1, 0, -1])
    assert tree.forecast == [True, False, True]  # 5 came from both sources
    assert merge(paths, budget=0, strength=3, guess=0.5).tokens == []


def test_drafter_uses_forecasts_only_for_the_context_they_follow() -> None:
    tokens = ForecastTokens(torch.zeros(2, 4), torch.zeros(1, 2, 4))
    drafter = ForecastDrafter(tokens, width=2, ngram=NGramDrafter())
    logits = torch.full((2, 50), -10.0)
    logits[0, 7], logits[1, 8] = 5.0, 4.0
    drafter.observe(logits, context_len=3)
    tree = drafter.propose([1, 2, 3], budget=2)
    assert tree.tokens[:2] == [7, 8] and tree.parents[:2] == [-1, 0] and all(tree.forecast)
    assert len(drafter.propose([1, 2, 3, 4], budget=2)) == 0  # stale: they followed a shorter context


@pytest.fixture(scope="module")
def engine() -> Engine:
    return load_engine(MODEL, "fp32", max_seq_len=512)


def test_training_rows_are_verify_rows(engine: Engine) -> None:
    # the training forward (one masked pass over many anchors) and DS2D's verify (forecast rows
    # after the root) compute the same forecast for the same context
    model, tok = engine.model, engine.tokenizer
    forecast = ForecastTokens.load(TRAINED, model.config)
    seq = tok.encode(tok.chat_prompt("Name three colours."))
    n = len(seq) - 1  # the root is the last token
    h, targets = forecast_rows(model, seq, [n - 3, n], forecast)
    trained = model.head(h[forecast.k :])  # the group after seq[n]
    engine.reserve(512)
    with torch.inference_mode():
        model.reset_caches()
        model(torch.tensor([seq[:n]]), torch.arange(n))
        _, _, ahead = verify(model, seq[n], n, DraftTree(), forecast)  # the root and its forecast rows
    torch.testing.assert_close(ahead, trained, atol=2e-3, rtol=2e-3)
    # forecast i after seq[t] is trained on seq[t + i + 1]: after seq[n - 3], seq[n - 1] and seq[n], then nothing
    assert targets.tolist() == [seq[n - 1], seq[n]] + [-100] * (2 * forecast.k - 2)


def test_trained_forecast_drafts_are_accepted_and_lossless(engine: Engine) -> None:
    forecast = ForecastTokens.load(TRAINED, engine.model.config)
    tok = engine.tokenizer
    ids = tok.encode(tok.chat_prompt("Write a Python function that returns the sum of the even numbers in a list."))
    greedy = engine.generate(ids, 48)
    # probing every step keeps the forecast rows on whatever they cost on this machine
    controller = BudgetController(group=1 + forecast.k, probe_every=1)
    drafted = generate(engine.model, ids, 48, tok.eos_id, ForecastDrafter(forecast), controller)
    assert drafted.token_ids == greedy.token_ids
    assert drafted.stats["forecast_step_share"] == 1.0
    assert drafted.stats["forecast_share"] > 0.5 and drafted.stats["accepted_per_step"] > 0.1
    with pytest.raises(ValueError, match="rows per verified token"):
        generate(engine.model, ids, 4, tok.eos_id, ForecastDrafter(forecast), BudgetController())
