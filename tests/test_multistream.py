"""K LoRA streams in one batched forward per step, on the real SmolLM2 (fp32)."""
import pathlib

import pytest

from harness.engine import Engine, load_engine
from harness.engine.lora import AdapterBank, load_peft
from harness.engine.multistream import generate_streams, generate_with_adapter

ADAPTERS = pathlib.Path(__file__).parent.parent / "fixtures" / "adapters"
STYLES = ["formal", "polite", "jovial"]
PROMPTS = ["Recommend a podcast.", "Tell a colleague you finished the report."]


@pytest.fixture(scope="module")
def engine() -> Engine:
    engine = load_engine("smollm2-135m-instruct", "fp32")
    engine.model.setup_caches(len(STYLES), 256, engine.dtype)
    return engine


@pytest.fixture(scope="module")
def bank(engine: Engine) -> AdapterBank:
    return AdapterBank.stack({s: load_peft(ADAPTERS / s, engine.model.config) for s in STYLES})


def chat_ids(engine: Engine, user: str) -> list[int]:
    return engine.tokenizer.encode(engine.tokenizer.chat_prompt(user))


def streams(engine: Engine, bank: AdapterBank, ids: list[int], adapters: list, prefill: str, eos: int | None = None,
            tokens: int = 16) -> list[list[int]]:
    eos = engine.tokenizer.eos_id if eos is None else eos
    return [g.token_ids for g in generate_streams(engine.model, ids, tokens, eos, bank.inputs(adapters), prefill)]


def test_per_stream_prefill_equals_single_streams(engine: Engine, bank: AdapterBank) -> None:
    for user in PROMPTS:
        ids = chat_ids(engine, user)
        gens = generate_streams(engine.model, ids, 16, engine.tokenizer.eos_id, bank.inputs(STYLES), "per_stream")
        for style, gen in zip(STYLES, gens):
            alone = generate_with_adapter(engine.model, ids, 16, engine.tokenizer.eos_id, bank, style)
            assert gen.token_ids == alone.token_ids, (user, style)
            assert len(gen.token_times) == len(gen.token_ids) and gen.token_times == sorted(gen.token_times)
            assert gen.prompt_tokens == len(ids) and gen.stats["streams"] == 3
        assert len({tuple(g.token_ids) for g in gens}) == 3


def test_shared_prefill_of_the_base_is_the_base_greedy(engine: Engine, bank: AdapterBank) -> None:
    ids = chat_ids(engine, PROMPTS[0])
    base = engine.generate(ids, 16).token_ids
    assert streams(engine, bank, ids, [None, None, None], "shared") == [base] * 3


def test_shared_prefill_streams_follow_their_adapters(engine: Engine, bank: AdapterBank) -> None:
    ids = chat_ids(engine, PROMPTS[1])
    shared = streams(engine, bank, ids, STYLES, "shared")
    assert len({tuple(s) for s in shared}) == 3
    assert [s[0] for s in shared] == [s[0] for s in streams(engine, bank, ids, STYLES, "per_stream", tokens=1)]


def test_a_stream_stops_at_eos_while_the_others_go_on(engine: Engine, bank: AdapterBank) -> None:
    ids = chat_ids(engine, PROMPTS[0])
    full = streams(engine, bank, ids, STYLES, "per_stream", eos=-1)
    # an EOS stand-in: a token only the polite stream emits
    eos = next(t for t in full[1][2:] if t not in full[0] + full[2])
    cut = streams(engine, bank, ids, STYLES, "per_stream", eos=eos)
    assert cut == [full[0], full[1][: full[1].index(eos) + 1], full[2]]


def test_misuse_is_rejected(engine: Engine, bank: AdapterBank) -> None:
    ids = chat_ids(engine, PROMPTS[0])
    with pytest.raises(ValueError, match=r"4 streams need a KV cache of 4 rows, it has 3"):
        streams(engine, bank, ids, STYLES + [None], "per_stream")
    with pytest.raises(ValueError, match="unknown prefill 'lazy'"):
        streams(engine, bank, ids, STYLES, "lazy")
    with pytest.raises(ValueError, match=r"unknown adapters \['pirate'\]"):
        streams(engine, bank, ids, ["pirate"], "per_stream")
