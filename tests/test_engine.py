"""The reference engine on the real SmolLM2 GGUF file: greedy text, precisions, tokenizer."""
import pytest
import torch

from harness.engine import Engine, load_engine, model_path
from harness.spec.variant import PRECISIONS
from tests.conftest import multilingual_samples

MODEL = "smollm2-135m-instruct"
CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the ocean.",
    "Explain what a CPU cache is in two sentences.",
    "How do I reverse a list in Python?",
]


@pytest.fixture(scope="module")
def engines() -> dict[str, Engine]:
    return {p: load_engine(MODEL, p, max_seq_len=1024) for p in PRECISIONS}


@pytest.fixture(scope="module")
def fp32(engines: dict[str, Engine]) -> Engine:
    return engines["fp32"]


def chat_ids(engine: Engine, user: str) -> list[int]:
    return engine.tokenizer.encode(engine.tokenizer.chat_prompt(user))


def test_unknown_names_are_rejected() -> None:
    with pytest.raises(ValueError, match=MODEL):
        model_path("no-such-model")
    with pytest.raises(ValueError, match="fp32"):
        load_engine(MODEL, "int3")
    with pytest.raises(ValueError, match="eager, compiled"):
        load_engine(MODEL, "fp32", graph="jit")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_capital_of_france(engines: dict[str, Engine], precision: str) -> None:
    engine = engines[precision]
    gen = engine.generate(engine.tokenizer.encode("The capital of France is"), max_new_tokens=3)
    assert engine.tokenizer.decode(gen.token_ids).startswith(" Paris")


def test_fp16_greedy_agrees_with_fp32(engines: dict[str, Engine]) -> None:
    # fp16 rounds each dequantized weight by <= 2**-11 relative, so greedy paths may only part
    # at near-ties; measured: 104/104 tokens identical. One late flip would still pass at 90 %
    # of tokens on the common prefix; a real fp16 bug flips early and fails.
    common = total = 0
    for user in CHAT_PROMPTS:
        ids = chat_ids(engines["fp32"], user)
        a = engines["fp32"].generate(ids, 32).token_ids
        b = engines["fp16"].generate(ids, 32).token_ids
        common += next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        total += len(a)
    assert common / total >= 0.9, f"fp16 follows fp32 greedy for {common}/{total} tokens"


def test_fp16_teacher_forced_top1_agrees_with_fp32(engines: dict[str, Engine]) -> None:
    # prompts of many rows take the fp16 upcast path; measured 1702/1713 = 99.4 % here
    agree = total = 0
    for text in multilingual_samples().values():
        ids = engines["fp32"].tokenizer.encode(text)
        a, b = (engines[p].logits(ids).argmax(-1) for p in ("fp32", "fp16"))
        agree += int((a == b).sum())
        total += len(ids)
    assert agree / total >= 0.98, f"fp16 top-1 agrees with fp32 at {agree}/{total} positions"


def test_weights_bytes(engines: dict[str, Engine]) -> None:
    c = engines["fp32"].model.config
    kv_dim = c.n_local_heads * c.head_dim
    per_layer = 2 * c.dim + 2 * c.dim * c.dim + 2 * c.dim * kv_dim + 3 * c.dim * c.intermediate_size
    params = c.vocab_size * c.dim + c.n_layer * per_layer + c.dim  # tied LM head counted once
    assert engines["fp32"].weights_bytes == 4 * params
    assert engines["fp16"].weights_bytes == 2 * params
    assert all(p.dtype == torch.float16 for p in engines["fp16"].model.parameters())


def test_kv_cache_bytes(engines: dict[str, Engine]) -> None:
    c = engines["fp32"].model.config
    per_element = 2 * c.n_layer * c.n_local_heads * 1024 * c.head_dim  # K and V, batch 1
    assert engines["fp32"].kv_cache_bytes() == 4 * per_element
    assert engines["fp16"].kv_cache_bytes() == 2 * per_element


def test_token_times(fp32: Engine) -> None:
    gen = fp32.generate(chat_ids(fp32, "Write a haiku about the ocean."), max_new_tokens=12)
    assert len(gen.token_times) == len(gen.token_ids) == 12
    assert 0 < gen.token_times[0]
    assert all(a < b for a, b in zip(gen.token_times, gen.token_times[1:]))
    assert gen.prompt_tokens == len(chat_ids(fp32, "Write a haiku about the ocean."))


def test_eos_stops_generation(fp32: Engine) -> None:
    gen = fp32.generate(chat_ids(fp32, "What is the capital of France?"), max_new_tokens=64)
    assert gen.token_ids[-1] == fp32.tokenizer.eos_id
    assert fp32.tokenizer.eos_id not in gen.token_ids[:-1]
    assert len(gen.token_ids) < 64
    assert "Paris" in fp32.tokenizer.decode(gen.token_ids)


def test_requests_are_independent(fp32: Engine) -> None:
    ids = chat_ids(fp32, "How do I reverse a list in Python?")
    first = fp32.generate(ids, 16).token_ids
    fp32.generate(chat_ids(fp32, "Write a haiku about the ocean."), 40)
    assert fp32.generate(ids, 16).token_ids == first


def test_decode_with_cache_matches_one_prefill(fp32: Engine) -> None:
    # greedy tokens from the KV-cached loop are the argmax of one teacher-forced forward
    ids = chat_ids(fp32, "Explain what a CPU cache is in two sentences.")
    gen = fp32.generate(ids, 24).token_ids
    logits = fp32.logits(ids + gen[:-1])
    assert logits.shape == (len(ids) + len(gen) - 1, fp32.model.config.vocab_size)
    assert logits.dtype == torch.float32
    assert logits[len(ids) - 1 :].argmax(-1).tolist() == gen


def test_too_long_request_is_rejected(fp32: Engine) -> None:
    with pytest.raises(ValueError, match="max_seq_len"):
        fp32.generate([1] * 1000, max_new_tokens=100)


def test_chat_prompt(fp32: Engine) -> None:
    prompt = fp32.tokenizer.chat_prompt("Hi there")
    assert prompt.startswith("<|im_start|>system\n")
    assert "<|im_start|>user\nHi there<|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_special_tokens_are_single_tokens(fp32: Engine) -> None:
    tok = fp32.tokenizer
    assert tok.encode("<|im_start|>user\nHi<|im_end|>")[0] == 1
    assert tok.encode("<|im_start|>user\nHi<|im_end|>")[-1] == tok.eos_id == 2
    assert tok.encode("Hello world")[0] != tok.bos_id  # no BOS added
    assert tok.decode(tok.encode("<|im_start|>user\nHi<|im_end|>")) == "user\nHi"


@pytest.mark.parametrize("name", [n for n in multilingual_samples() if n != "chatml"])
def test_decode_encode_roundtrip(fp32: Engine, name: str) -> None:
    text = multilingual_samples()[name]
    assert fp32.tokenizer.decode(fp32.tokenizer.encode(text)) == text
