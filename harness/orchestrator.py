"""Runs a scenario: every repetition of every variant on every target, stored as measured.

Repetitions are interleaved (rep 1 of every variant, then rep 2...) so slow drift of the
machine hits all variants alike. Each repetition is one runner process: one model load,
the warm-up requests (stored, flagged, excluded from statistics), then the prompts.
A failed run stores its reason and the scenario goes on with the rest.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from harness import __version__, counters
from harness.environment import host_environment
from harness.errors import HarnessError
from harness.runner import Job
from harness.scenario import Scenario, Variant
from harness.store import Store
from harness.targets import Target, TargetError, open_targets

Step = Callable[[str], None]


def total_steps(scenario: Scenario, n_targets: int) -> int:
    """Requests the run will make, warm-ups included: the length of a progress bar."""
    per_process = scenario.spec.workload.warmup + len(scenario.prompts)
    return per_process * len(scenario.variants) * scenario.spec.workload.repetitions * n_targets


def resolve_targets(scenario: Scenario, override: list[str] | None = None) -> list[Target]:
    """The targets of the scenario, or those given with --target instead."""
    try:
        return [t for spec in (override or scenario.spec.targets) for t in open_targets(spec)]
    except ValueError as exc:
        raise HarnessError(f"--target: {exc}") from None


def run_scenario(scenario: Scenario, targets: list[Target], store: Store, on_step: Step = lambda _: None) -> str:
    environment = host_environment()
    run_id = store.begin_run(
        scenario.name, str(scenario.path), scenario.sha256, scenario.path.read_text(encoding="utf-8"),
        [p.model_dump() for p in scenario.prompts], __version__, environment["git_commit"], environment,
    )
    for target in targets:
        for variant in scenario.variants:
            store.add_result(run_id, variant.key, target.info.key, variant.as_dict(), target.info.as_dict())
    failed: set[tuple[str, str]] = set()
    baseline_outputs = _BaselineOutputs()
    delay = environment.get("test_delay_ms_per_token", 0.0)
    try:
        for repetition in range(scenario.spec.workload.repetitions):
            for target in targets:
                for variant in scenario.variants:
                    if (variant.key, target.info.key) in failed:
                        continue
                    measure = _Measurement(scenario, store, run_id, target, variant, repetition, baseline_outputs,
                                           delay)
                    try:
                        measure.run(on_step)
                    except TargetError as exc:
                        failed.add((variant.key, target.info.key))
                        store.fail_result(run_id, variant.key, target.info.key, f"repetition {repetition}: {exc}")
    except BaseException:
        store.end_run(run_id, "interrupted")  # what was measured stays in the store
        raise
    store.end_run(run_id, "failed" if failed else "ok")
    return run_id


class _BaselineOutputs:
    """What reference variants produced, per (target, repetition, prompt): the baseline's
    tokens and teacher data, and greedy decode rates for DS2D twins."""

    def __init__(self) -> None:
        self.tokens: dict[tuple[str, int, str], list[int]] = {}
        self.teachers: dict[tuple[str, int], dict[str, dict]] = {}
        # greedy variants' decode rates per (variant, target, repetition, prompt), for ds2d_speedup
        self.decode_rates: dict[tuple[str, str, int, str], float] = {}


class _Measurement:
    """One repetition of one variant on one target: one runner process."""

    def __init__(self, scenario: Scenario, store: Store, run_id: str, target: Target, variant: Variant,
                 repetition: int, baseline_outputs: _BaselineOutputs, delay_ms_per_token: float) -> None:
        self.scenario, self.store, self.run_id = scenario, store, run_id
        self.target, self.variant, self.repetition = target, variant, repetition
        self.baseline = baseline_outputs
        self.delay_ms_per_token = delay_ms_per_token  # the test knob (harness.environment), whole run
        self.is_baseline = variant == scenario.baseline
        self.references = {p.id: p.reference for p in scenario.prompts}

    def run(self, on_step: Step) -> None:
        workload = self.scenario.spec.workload
        job = Job(
            model=self.scenario.spec.model,
            variant=self.variant.as_dict(),
            prompts=[p.model_dump() for p in self.scenario.prompts],
            max_new_tokens=workload.max_new_tokens,
            warmup=workload.warmup,
            emit_teacher=self.is_baseline,
            teachers=None if self.is_baseline else self.baseline.teachers.get((self.target.info.key, self.repetition)),
            adapters_dir=str(self.scenario.adapters_dir) if self.variant.adapters else None,
            delay_ms_per_token=self.delay_ms_per_token,
        )
        for event in self.target.run(job, workload.timeout_s):
            kind = event["event"]
            if kind == "loaded":
                self._store(counters.load_samples(event, self.repetition))
            elif kind == "process":
                self._store(counters.process_samples(event, self.repetition))
            elif kind == "sample":
                self._request(event)
                on_step(f"{self.target.info.key} {self.variant.key} rep {self.repetition + 1}")
            elif kind == "teacher":
                key = (self.target.info.key, self.repetition)
                self.baseline.teachers.setdefault(key, {})[event["prompt_id"]] = event["teacher"]
            elif kind == "fidelity":
                self._store(counters.fidelity_samples(event, self.repetition))

    def _request(self, event: dict) -> None:
        prompt_id, warmup = event["prompt_id"], event["warmup"]
        key = (self.target.info.key, self.repetition, prompt_id)
        base_model_output = event.get("adapter") is None  # adapter outputs differ from the baseline on purpose
        if self.is_baseline and not warmup and base_model_output:
            self.baseline.tokens[key] = event["token_ids"]
        samples = counters.request_samples(
            event, self.repetition, self.references[prompt_id],
            self.baseline.tokens.get(key) if base_model_output else None,
        )
        samples += self._ds2d_speedup(samples, prompt_id)
        self._store(samples, warmup)
        if not warmup:
            self.store.add_output(self.run_id, self.variant.key, self.target.info.key, self.repetition,
                                  prompt_id, event.get("adapter"), event["text"], event["token_ids"])

    def _ds2d_speedup(self, samples: list[counters.Sample], prompt_id: str) -> list[counters.Sample]:
        """DS2D decode rate over its greedy twin's for the same prompt and repetition."""
        rate = next((s.value for s in samples if s.metric == "decode_tokens_per_s"), None)
        if rate is None:
            return []
        key = (self.target.info.key, self.repetition, prompt_id)
        if self.variant.decoding == "greedy":
            self.baseline.decode_rates[(self.variant.key, *key)] = rate
            return []
        twin = replace(self.variant, decoding="greedy").key
        greedy = self.baseline.decode_rates.get((twin, *key))
        return [] if greedy is None else [counters.Sample("ds2d_speedup", rate / greedy, self.repetition, prompt_id)]

    def _store(self, samples: list[counters.Sample], warmup: bool = False) -> None:
        self.store.add_samples(self.run_id, self.variant.key, self.target.info.key, samples, warmup)
