"""Benchmark: the reference engine's INT4 against a real peer, llama.cpp, on the same GGUF.

Issue 3's peer targets, measured in one process, same prompts, same thread count, the
engines interleaved per repetition so drift in machine state hits all of them alike:
- INT4 greedy decode >= 0.8x llama.cpp greedy decode (all bench prompts);
- INT4 + DS2D decode ahead of llama.cpp greedy on summarization prompts;
- the first target again with the decode step compiled (graph: compiled): how much of the
  gap is eager PyTorch's per-op overhead.

Decode speed is (tokens - 1) / (time of last token - time of first token): prefill and
the first token are excluded for every engine alike. Run with `make bench`; the numbers
are printed and kept in the JUnit properties (`record_property`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from llama_cpp import Llama

from harness.engine import Engine, load_engine, model_path
from harness.engine import ds2d
from harness.spec.prompts import Prompt, load_prompts
from harness.analysis.stats import ratio_with_interval

THREADS = 2
MAX_NEW_TOKENS = 64
REPETITIONS = 5
PROMPTS = Path(__file__).parents[2] / "fixtures" / "prompts" / "paper-bench.jsonl"

Decode = Callable[[list[int]], list[float]]  # prompt ids -> token timestamps (s)


def decode_tokens_per_s(times: list[float]) -> float:
    if len(times) < 2 or times[-1] == times[0]:
        raise ValueError("need at least two tokens at different times to measure decode speed")
    return (len(times) - 1) / (times[-1] - times[0])


def llama_decoder(llm: Llama, eos_id: int) -> Decode:
    def run(ids: list[int]) -> list[float]:
        llm.reset()  # no KV prefix reuse between requests
        start, times = time.perf_counter(), []
        for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            times.append(time.perf_counter() - start)
            if token == eos_id or len(times) == MAX_NEW_TOKENS:
                return times
        return times
    return run


def engine_decoder(engine: Engine, decoding: str) -> Decode:
    controller = ds2d.BudgetController()  # carried across requests, as the runner does

    def run(ids: list[int]) -> list[float]:
        if decoding == "ds2d":
            return ds2d.generate(engine.model, ids, MAX_NEW_TOKENS, engine.tokenizer.eos_id,
                                 controller=controller).token_times
        return engine.generate(ids, MAX_NEW_TOKENS).token_times
    return run


@pytest.fixture(scope="module")
def prompts(int4: Engine) -> dict[str, tuple[Prompt, list[int]]]:
    chat = int4.tokenizer.chat_prompt
    return {p.id: (p, int4.tokenizer.encode(chat(p.prompt) if p.template == "chat" else p.prompt))
            for p in load_prompts(PROMPTS)}


@pytest.fixture(scope="module")
def int4() -> Engine:
    torch.set_num_threads(THREADS)
    engine = load_engine("smollm2-135m-instruct", "int4")
    engine.reserve(1024 + 64)  # room for DS2D's draft tree past the sequence
    return engine


@pytest.fixture(scope="module")
def int4_compiled() -> Engine:
    torch.set_num_threads(THREADS)
    return load_engine("smollm2-135m-instruct", "int4", graph="compiled", max_seq_len=1024)


@pytest.fixture(scope="module")
def measured(int4: Engine, int4_compiled: Engine, prompts) -> dict[str, dict[str, list[float]]]:
    """engine name -> prompt id -> decode tok/s per repetition, engines interleaved."""
    llm = Llama(str(model_path()), n_ctx=1024, n_threads=THREADS, n_threads_batch=THREADS, verbose=False)
    engines = {"llama.cpp greedy": llama_decoder(llm, int4.tokenizer.eos_id),
               "int4 greedy": engine_decoder(int4, "greedy"),
               "int4 compiled greedy": engine_decoder(int4_compiled, "greedy"),
               "int4 ds2d": engine_decoder(int4, "ds2d")}
    for decode in engines.values():  # warm-up: first-call allocations and kernel selection
        decode(next(iter(prompts.values()))[1])
    speeds: dict[str, dict[str, list[float]]] = {name: {pid: [] for pid in prompts} for name in engines}
    for _ in range(REPETITIONS):
        for pid, (_, ids) in prompts.items():
            for name, decode in engines.items():
                speeds[name][pid].append(decode_tokens_per_s(decode(ids)))
    return speeds


def pooled(speeds: dict[str, list[float]], prompts, kind: str | None) -> list[float]:
    """Per-repetition mean over the selected prompts' decode speeds."""
    ids = [pid for pid, (p, _) in prompts.items() if kind is None or p.kind == kind]
    return [statistics.fmean(speeds[pid][rep] for pid in ids) for rep in range(REPETITIONS)]


def compare(measured, prompts, record_property, name: str, kind: str | None) -> float:
    ours, peer = pooled(measured[name], prompts, kind), pooled(measured["llama.cpp greedy"], prompts, kind)
    ratio, (low, high) = ratio_with_interval(ours, peer)
    label = f"{name} vs llama.cpp greedy ({kind or 'all prompts'})"
    print(f"\n{label}: {statistics.median(ours):.1f} vs {statistics.median(peer):.1f} tok/s decode, "
          f"ratio {ratio:.2f} [{low:.2f}, {high:.2f}], {THREADS} threads, {REPETITIONS} repetitions")
    record_property(f"{name} tok/s ({kind or 'all'})", round(statistics.median(ours), 2))
    record_property(f"llama.cpp greedy tok/s ({kind or 'all'})", round(statistics.median(peer), 2))
    record_property(f"{name} / llama.cpp ({kind or 'all'})", round(ratio, 3))
    return ratio


def test_int4_greedy_decode_at_least_0_8x_llamacpp(measured, prompts, record_property) -> None:
    ratio = compare(measured, prompts, record_property, "int4 greedy", None)
    assert ratio >= 0.8, f"int4 greedy decode is {ratio:.2f}x llama.cpp's, budget >= 0.8x"


def test_int4_compiled_greedy_decode_at_least_0_8x_llamacpp(measured, prompts, record_property) -> None:
    ratio = compare(measured, prompts, record_property, "int4 compiled greedy", None)
    assert ratio >= 0.8, f"int4 compiled greedy decode is {ratio:.2f}x llama.cpp's, budget >= 0.8x"


def test_int4_ds2d_ahead_of_llamacpp_on_summaries(measured, prompts, record_property) -> None:
    ratio = compare(measured, prompts, record_property, "int4 ds2d", "summarize")
    assert ratio > 1.0, f"int4 + DS2D decode is {ratio:.2f}x llama.cpp greedy on summaries, budget > 1.0x"
