from __future__ import annotations

import pytest

from harness.measure.counters import agreement, exact_match, load_samples, request_samples
from harness.run.protocol import Loaded, Request
from harness.spec.prompts import Prompt

FIELDS = {
    "prompt_id": "p", "warmup": False, "prompt_tokens": 20, "token_ids": [5, 6, 7, 8], "text": " Paris.",
    "token_times_s": [0.5, 0.6, 0.8, 0.9], "e2e_s": 0.95,
}
EVENT = Request(**FIELDS)
PROMPT = Prompt(id="p", prompt="What is the capital of France?")


def by_name(samples):
    out: dict[str, list[float]] = {}
    for s in samples:
        out.setdefault(s.metric, []).append(s.value)
    return out


def test_latency_counters_follow_their_definitions() -> None:
    m = by_name(request_samples(EVENT, 0, PROMPT, None))
    assert m["ttft_ms"] == [pytest.approx(500.0)]
    assert m["prefill_tokens_per_s"] == [pytest.approx(40.0)]
    assert m["decode_tokens_per_s"] == [pytest.approx(3 / 0.4)]  # tokens after the first / time after it
    assert m["itl_ms"] == pytest.approx([100.0, 200.0, 100.0])
    assert m["e2e_ms"] == [pytest.approx(950.0)]
    assert "exact_match" not in m and "agreement_with_baseline" not in m


def test_speculative_steps_are_timed_per_step_not_per_token() -> None:
    # DS2D: the second step accepted three tokens at once, the third one
    times = [0.5, 0.6, 0.6, 0.6, 0.8]
    event = Request(**{**FIELDS, "token_ids": [5, 6, 7, 8, 9], "token_times_s": times, "stats": {"tokens_per_step": 1.7}})
    m = by_name(request_samples(event, 0, PROMPT, None))
    assert "itl_ms" not in m  # two of its four token gaps would be 0 ms
    assert m["step_ms"] == pytest.approx([100.0, 200.0])
    assert m["decode_tokens_per_s"] == [pytest.approx(4 / 0.3)]


def test_one_token_has_no_decode_rate() -> None:
    m = by_name(request_samples(Request(**{**FIELDS, "token_ids": [5], "token_times_s": [0.5]}), 0, PROMPT, None))
    assert "decode_tokens_per_s" not in m and "itl_ms" not in m


def test_accuracy_counters() -> None:
    m = by_name(request_samples(EVENT, 0, PROMPT.model_copy(update={"reference": ["paris", "Lyon"]}),
                                 [5, 6, 9, 8, 1]))
    assert m["exact_match"] == [1.0]
    assert m["agreement_with_baseline"] == [pytest.approx(3 / 5)]
    assert exact_match("The capital is Paris", "Paris") == 0.0
    assert agreement([], []) == 1.0 and agreement([1], []) == 0.0


def test_load_samples() -> None:
    m = by_name(load_samples(Loaded(load_ms=12.5, weights_bytes=100, kv_cache_bytes=7), 2))
    assert m == {"load_ms": [12.5], "weights_bytes": [100.0], "kv_cache_bytes": [7.0]}
