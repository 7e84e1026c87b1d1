"""The reference engine against a real peer, llama.cpp (llama-cpp-python), on the same GGUF file."""
import numpy as np
import pytest
import torch
from llama_cpp import Llama

from harness.engine import Engine, load_engine, model_path
from tests.conftest import multilingual_samples

MAX_SEQ = 1024
CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the ocean.",
    "Explain what a CPU cache is in two sentences.",
    "Give me three tips for learning a new language.",
    "How do I reverse a list in Python?",
    "Summarize the plot of Romeo and Juliet in a few sentences.",
    "What are the benefits of regular exercise?",
    "Write a short email asking a colleague to review my code.",
]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return load_engine("smollm2-135m-instruct", "fp32", max_seq_len=MAX_SEQ)


@pytest.fixture(scope="module")
def llm() -> Llama:
    # the engine's thread budget (1 under make test, whose two workers would oversubscribe 2 cores at 2 each)
    threads = torch.get_num_threads()
    return Llama(str(model_path()), n_ctx=MAX_SEQ, n_threads=threads, n_threads_batch=threads, logits_all=True, verbose=False)


def llama_tokenize(llm: Llama, text: str) -> list[int]:
    return llm.tokenize(text.encode(), add_bos=False, special=True)


def llama_logits(llm: Llama, ids: list[int]) -> torch.Tensor:
    # teacher-forced [T, vocab]
    llm.reset()
    llm.eval(ids)
    return torch.from_numpy(np.array(llm.scores[: len(ids)]))


def llama_greedy(llm: Llama, ids: list[int], max_new_tokens: int) -> list[int]:
    llm.reset()  # no reuse of an earlier request's KV prefix: same numbers whatever ran before
    out: list[int] = []
    for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(token)
        if token == llm.token_eos() or len(out) == max_new_tokens:
            return out
    return out


def top1_agreement(engine: Engine, llm: Llama, sequences: list[list[int]]) -> tuple[int, int]:
    agree = total = 0
    for ids in sequences:
        ours, theirs = engine.logits(ids).argmax(-1), llama_logits(llm, ids).argmax(-1)
        agree += int((ours == theirs).sum())
        total += len(ids)
    return agree, total


@pytest.mark.parametrize("name", list(multilingual_samples()))
def test_tokenization_matches(engine: Engine, llm: Llama, name: str) -> None:
    text = multilingual_samples()[name]
    assert engine.tokenizer.encode(text) == llama_tokenize(llm, text)


def test_top1_agreement_on_chat(engine: Engine, llm: Llama) -> None:
    # Each sequence: a chat prompt + llama.cpp's own greedy answer (up to 64 tokens), 774
    # positions. Measured: ours 98.3 %; llama.cpp against itself with an f32 instead of f16 KV
    # cache 98.4 %, so 98 % sits at llama.cpp's own noise floor (its matmuls quantize the
    # activations to 8 bits). Our fp32 logits match transformers' GGUF loader within 1e-4.
    prompts = [engine.tokenizer.encode(engine.tokenizer.chat_prompt(p)) for p in CHAT_PROMPTS]
    agree, total = top1_agreement(engine, llm, [ids + llama_greedy(llm, ids, 64) for ids in prompts])
    assert total >= 500
    assert agree / total >= 0.98, f"top-1 agreement with llama.cpp {agree}/{total} = {agree / total:.2%}"


def test_top1_agreement_on_multilingual_text(engine: Engine, llm: Llama) -> None:
    # Human-written text has many near-ties (measured median top-1 margin at a disagreement
    # 0.09 logits). llama.cpp quantizes activations to 8 bits for its Q4_1 matmuls, so it does
    # not even agree with itself there: f16 vs f32 KV cache (type_k/type_v) gave 95.3 % on
    # these samples; ours vs llama.cpp measured 95.6 %. A RoPE or cache bug falls far below.
    texts = multilingual_samples().values()
    agree, total = top1_agreement(engine, llm, [engine.tokenizer.encode(t) for t in texts])
    assert total >= 500
    assert agree / total >= 0.94, f"top-1 agreement with llama.cpp {agree}/{total} = {agree / total:.2%}"


def test_greedy_text_matches(engine: Engine, llm: Llama) -> None:
    # 4 tokens: the 5th is a near-tie (our margin 0.22 logits, llama.cpp's 0.02)
    prompt = "The capital of France is"
    ids = engine.tokenizer.encode(prompt)
    llm.reset()
    ours = engine.tokenizer.decode(engine.generate(ids, 4).token_ids)
    theirs = llm.create_completion(prompt, max_tokens=4, temperature=0.0, top_k=1)["choices"][0]["text"]
    assert ours == theirs
    assert ours.startswith(" Paris")
