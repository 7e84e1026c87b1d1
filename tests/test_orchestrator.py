"""Faults lose nothing: a failed run is stored with its reason, the rest goes on."""

from __future__ import annotations

import pytest

from harness.run.orchestrator import resume_run, run_scenario
from harness.run.protocol import Job, Loaded, Process, Request
from harness.spec.scenario import Variant, load_scenario
from harness.store import Store
from harness.targets.base import TargetError, TargetInfo
from harness.targets.local import LocalTarget

from conftest import write_scenario


class ScriptedTarget:
    """A target double that replays runner events and loses the fp16 run midway on rep 2."""

    info = TargetInfo("scripted", "bench", None, None, None, emulated=True)

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def run(self, job: Job, timeout_s: float):
        precision = job.variant["precision"]
        self.calls.append((precision, len(self.calls)))
        yield Loaded(load_ms=10.0, weights_bytes=100, kv_cache_bytes=10)
        for prompt in job.prompts:
            yield Request(prompt_id=prompt["id"], warmup=False, prompt_tokens=3, token_ids=[1, 2, 3], text="Paris",
                          token_times_s=[0.1, 0.2, 0.3], e2e_s=0.3)
            if precision == "fp16" and len(self.calls) > 2:
                raise TargetError("device lost")
        yield Process(peak_rss_bytes=1000)


def test_failed_run_is_stored_and_others_continue(tmp_path) -> None:
    prompts = [{"id": "a", "prompt": "x", "reference": "Paris"}, {"id": "b", "prompt": "y"}]
    scenario = load_scenario(write_scenario(tmp_path, prompts=prompts, workload={
        "prompts": "prompts.jsonl", "repetitions": 3, "warmup": 0}))
    store = Store(tmp_path / "r.sqlite")
    target = ScriptedTarget()
    run_id = run_scenario(scenario, [target], store)

    # Interleaved repetitions; fp16 is not retried after it failed.
    assert [p for p, _ in target.calls] == ["fp32", "fp16", "fp32", "fp16", "fp32"]
    results = {r.variant_key: r for r in store.results(run_id)}
    assert results["fp32-s1-greedy"].status == "ok"
    assert results["fp16-s1-greedy"].status == "failed"
    assert results["fp16-s1-greedy"].error == "repetition 1: device lost"
    assert store.run(run_id).status == "failed"
    fp16 = store.samples(run_id, "fp16-s1-greedy", "scripted:bench")
    # rep 0 complete, plus the one request of rep 1 measured before the device was lost
    assert [s.repetition for s in fp16 if s.metric == "e2e_ms"] == [0, 0, 1]
    assert [s.value for s in fp16 if s.metric == "agreement_with_baseline"] == [1.0, 1.0, 1.0]
    assert len(store.samples(run_id, "fp32-s1-greedy", "scripted:bench")) > len(fp16)


class FailingBaseline(ScriptedTarget):
    """Loses the baseline's (fp32's) second repetition, once."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = False

    def run(self, job: Job, timeout_s: float):
        self.calls.append((job.variant["precision"], len(self.calls)))
        if job.variant["precision"] == "fp32" and len(self.calls) == 3 and not self.lost:
            self.lost = True
            raise TargetError("device lost")
        yield Loaded(load_ms=10.0, weights_bytes=100, kv_cache_bytes=10)
        for prompt in job.prompts:
            yield Request(prompt_id=prompt["id"], warmup=False, prompt_tokens=3, token_ids=[1, 2, 3], text="Paris",
                          token_times_s=[0.1, 0.2, 0.3], e2e_s=0.3)
        yield Process(peak_rss_bytes=1000)


def test_a_variant_measured_while_its_baseline_had_failed_is_measured_again_beside_it_on_resume(tmp_path) -> None:
    scenario = load_scenario(write_scenario(tmp_path, workload={"prompts": "prompts.jsonl", "repetitions": 3,
                                                                "warmup": 0}))
    store, target = Store(tmp_path / "r.sqlite"), FailingBaseline()
    run_id = run_scenario(scenario, [target], store)
    assert [p for p, _ in target.calls] == ["fp32", "fp16", "fp32", "fp16", "fp16"]
    fp16 = next(r for r in store.results(run_id) if r.variant_key == "fp16-s1-greedy")
    assert fp16.status == "failed" and fp16.error == (
        "repetition 2: measured without the counters scored against fp32-s1-greedy, whose repetition did not "
        "finish on this target; --resume measures them together")
    samples = store.samples(run_id, "fp16-s1-greedy", "scripted:bench")
    assert sorted({s.repetition for s in samples if s.metric == "e2e_ms"}) == [0, 1, 2]  # kept, as measured
    assert sorted({s.repetition for s in samples if s.metric == "agreement_with_baseline"}) == [0]

    target.calls.clear()
    resume_run(store, run_id, scenario, [target])
    assert [p for p, _ in target.calls] == ["fp32", "fp16", "fp32", "fp16"]
    assert store.run(run_id).status == "ok"
    samples = store.samples(run_id, "fp16-s1-greedy", "scripted:bench")
    for metric in ("e2e_ms", "agreement_with_baseline"):
        assert sorted(s.repetition for s in samples if s.metric == metric) == [0, 1, 2]  # once each


def test_local_runner_error_becomes_a_target_error() -> None:
    job = Job("smollm2-135m-instruct", Variant("fp8").as_dict(), [{"id": "a", "prompt": "hi"}], 2, 0)
    with pytest.raises(TargetError, match="runner failed: .*fp8"):
        list(LocalTarget().run(job, timeout_s=120))


def test_local_run_past_its_timeout_is_killed() -> None:
    job = Job("smollm2-135m-instruct", Variant("fp32").as_dict(), [{"id": "a", "prompt": "hi"}], 2, 0)
    with pytest.raises(TargetError, match=r"^runner timed out after 0.2 s$"):
        list(LocalTarget().run(job, timeout_s=0.2))


def test_interrupted_run_keeps_its_samples_and_says_so(tmp_path) -> None:
    scenario = load_scenario(write_scenario(tmp_path))
    store = Store(tmp_path / "r.sqlite")

    def stop(_: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_scenario(scenario, [ScriptedTarget()], store, on_step=stop)
    run = store.run()
    assert run.status == "interrupted"
    assert [s.metric for s in store.samples(run.run_id, "fp32-s1-greedy", "scripted:bench")][:3] == [
        "load_ms", "weights_bytes", "kv_cache_bytes"]
