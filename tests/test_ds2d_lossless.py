"""DS2D gives greedy's tokens on 30 prompts of five kinds in fp32 (fp16 and int4: test_ds2d_lossless_half.py).

In fp16 and int4 the tree rows are bit-identical to greedy's steps (test_ds2d.py); fp32's MKL
GEMM rounds a row differently with other rows beside it, so there it is greedy's up to that.
"""
import json
import pathlib

from harness.engine import load_engine
from harness.engine.drafter import NGramDrafter
from harness.engine.ds2d import BudgetController, generate
from harness.engine.forecast import ForecastDrafter, ForecastTokens

MODEL = "smollm2-135m-instruct"
FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures"
KINDS = {"summarize", "rewrite", "qa", "code", "open"}
MAX_NEW = 24


def check_lossless(precision: str) -> None:
    """Greedy's tokens from DS2D with n-gram drafting alone and with the trained forecast tokens."""
    engine = load_engine(MODEL, precision, max_seq_len=1024)
    forecast = ForecastTokens.load(FIXTURES / "forecast" / f"{MODEL}.safetensors", engine.model.config)
    prompts = [json.loads(line) for line in (FIXTURES / "prompts" / "paper.jsonl").read_text().splitlines()]
    assert len(prompts) >= 30 and {p["kind"] for p in prompts} == KINDS
    differ: list[str] = []
    drafted = {"ngram": 0, "forecast": 0}
    for p in prompts:
        ids = engine.tokenizer.encode(engine.tokenizer.chat_prompt(p["prompt"]))
        greedy = engine.generate(ids, MAX_NEW).token_ids
        for name, drafter, controller in (("ngram", NGramDrafter(), BudgetController()),
                                          ("forecast", ForecastDrafter(forecast), BudgetController(group=1 + forecast.k))):
            ds2d = generate(engine.model, ids, MAX_NEW, engine.tokenizer.eos_id, drafter, controller)
            differ += [f"{p['id']} ({name})"] if ds2d.token_ids != greedy else []
            drafted[name] += ds2d.stats["tokens_per_step"] > 1
    assert not differ, f"DS2D differs from greedy on {differ}"
    assert min(drafted.values()) >= 10, f"drafts were accepted on too few prompts to mean anything: {drafted}"


def test_ds2d_gives_greedys_tokens_in_fp32() -> None:
    check_lossless("fp32")
