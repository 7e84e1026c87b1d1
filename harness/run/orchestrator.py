"""Runs a scenario: every repetition of every variant on every target, stored as measured.

Repetitions are interleaved (rep 1 of every variant, then rep 2...) so slow drift of the
machine hits all variants alike. Each repetition is one runner process: one model load,
the warm-up requests (stored, flagged, excluded from statistics), then the prompts.
A failed run stores its reason and the scenario goes on with the rest; each finished
repetition is recorded, so `resume_run` can complete only what is missing.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from harness import __version__
from harness.measure import counters
from harness.measure.style import load_markers
from harness.measure.environment import host_environment
from harness.errors import HarnessError
from harness.run import native, protocol
from harness.run.protocol import Job
from harness.spec.scenario import Scenario, Variant, check_runtimes, load_scenario
from harness.store import Store
from harness.targets.base import Target, TargetError
from harness.targets.registry import open_targets
from harness.targets.adb.device_state import Hygiene

Step = Callable[[str], None]


def steps_per_process(scenario: Scenario) -> int:
    """Requests one runner process makes, warm-ups included: the length of its progress bar."""
    return scenario.spec.workload.warmup + len(scenario.prompts)


def runner_processes(scenario: Scenario, n_targets: int) -> int:
    """Runner processes a whole run starts: one per variant, target and repetition."""
    return len(scenario.variants) * n_targets * scenario.spec.workload.repetitions


def total_steps(scenario: Scenario, n_targets: int) -> int:
    """Requests the run will make, warm-ups included."""
    return steps_per_process(scenario) * runner_processes(scenario, n_targets)


def resolve_targets(scenario: Scenario, override: list[str] | None = None) -> list[Target]:
    """The targets of the scenario, or those given with --target instead."""
    if override:
        check_runtimes(scenario.path, "--target", override, scenario.variants)
    try:
        settings = {"aihub": scenario.spec.aihub}
        targets = [t for spec in (override or scenario.spec.targets)
                   for t in open_targets(spec, settings.get(spec.partition(":")[0]))]
    except ValueError as exc:
        raise HarnessError(f"--target: {exc}") from None
    for target in targets:
        if hasattr(target, "hygiene"):  # device targets follow the scenario's device rules
            target.hygiene = Hygiene(**scenario.spec.device.model_dump())
    return targets


def run_scenario(scenario: Scenario, targets: list[Target], store: Store, on_step: Step = lambda _: None,
                 parallel: bool = False, run_id: str | None = None) -> str:
    """Run it on these targets; with `parallel`, devices at once (`_per_device`), repetitions
    interleaved on each. Given `run_id`, a farm run: each host (or xdist worker) runs its own
    targets into it, and joining it again runs only what is not finished yet, as a resume."""
    environment = host_environment()
    run_id = store.begin_run(
        scenario.name, str(scenario.path), scenario.sha256, scenario.path.read_text(encoding="utf-8"),
        [p.model_dump() for p in scenario.prompts], __version__, environment["git_commit"], environment, run_id,
    )
    for target in targets:
        for variant in scenario.variants:
            store.add_result(run_id, variant.key, target.info.key, variant.as_dict(), target.info.as_dict())
    resume_run(store, run_id, scenario, targets, on_step, parallel)
    return run_id


def resumable(store: Store, run_id: str) -> tuple[Scenario, list[Target]]:
    """The scenario of a stored run (unchanged since) and those of its targets this host
    reaches, reopened by their keys (a farm run's other hosts resume their own)."""
    run = store.run(run_id)
    if run is None:
        raise HarnessError(f"{store.path}: --resume: no run {run_id!r} in the store")
    scenario = load_scenario(Path(run.scenario_path))
    if scenario.sha256 != run.scenario_sha256:
        raise HarnessError(f"{run.scenario_path}: changed since run {run_id} (sha256 differs); "
                           "a resumed run must measure the same scenario")
    hosts = {r.target_key: r.host for r in store.results(run_id)}
    targets, unreachable = [], []
    for key in hosts:
        try:
            targets += [t for t in resolve_targets(scenario, [key]) if t.info.key == key]
        except HarnessError:
            unreachable.append(f"{key} (ran on {hosts[key]})")
    if not targets:
        raise HarnessError(f"--resume: none of run {run_id}'s targets is reachable from here: {', '.join(unreachable)}")
    return scenario, targets


def resume_run(store: Store, run_id: str, scenario: Scenario, targets: list[Target],
               on_step: Step = lambda _: None, parallel: bool = False) -> None:
    """Run what a stored run is missing (`kept` says what stays as it is)."""
    keys = {target.info.key for target in targets}
    records = [r for r in store.results(run_id) if r.target_key in keys]
    repetitions = range(scenario.spec.workload.repetitions)
    done = kept(store, run_id, scenario, targets)
    for record in records:
        for repetition in repetitions:
            if (record.variant_key, record.target_key, repetition) not in done:
                store.reopen(run_id, record.variant_key, record.target_key, repetition)
    baseline = _BaselineOutputs()
    for target in targets:  # the baseline's finished outputs, for agreement of resumed variants
        for output in store.outputs(run_id, scenario.baseline.key, target.info.key):
            if output["adapter"] is None:
                baseline.tokens[(target.info.key, output["repetition"], output["prompt_id"])] = output["token_ids"]
    knobs = test_knobs(store.run(run_id).environment)  # a resumed run keeps its knobs
    _execute(scenario, targets, store, run_id, baseline, knobs, on_step, done, parallel)


def kept(store: Store, run_id: str, scenario: Scenario, targets: list[Target]) -> set[tuple[str, str, int]]:
    """The repetitions on these targets a resume keeps: those that finished ok, but for the
    teachers' (baseline's) repetition beside one that did not, since the others are scored
    against its teacher data, which lives in memory only."""
    keys = {target.info.key for target in targets}
    done = {d for d in store.completed(run_id) if d[1] in keys}
    teachers = {v.key for v in scenario.teachers}
    missing = {(r.target_key, repetition) for r in store.results(run_id) if r.target_key in keys
               for repetition in range(scenario.spec.workload.repetitions)
               if r.variant_key != scenario.baseline.key and (r.variant_key, r.target_key, repetition) not in done}
    return {d for d in done if d[0] not in teachers or (d[1], d[2]) not in missing}


def test_knobs(environment: dict) -> dict:
    """The test knobs a run was started with (harness.measure.environment), as Job fields."""
    return {"delay_ms_per_token": environment.get("test_delay_ms_per_token", 0.0),
            "perturb_language": environment.get("test_perturb_language")}


def _execute(scenario: Scenario, targets: list[Target], store: Store, run_id: str,
             baseline_outputs: _BaselineOutputs, knobs: dict, on_step: Step,
             done: AbstractSet[tuple[str, str, int]] = frozenset(), parallel: bool = False) -> None:
    failed: set[tuple[str, str]] = set()
    finished: set[tuple[str, str, int]] = set()  # ok in this call: their teacher data is in memory

    def measure(store: Store, target: Target, variant: Variant, repetition: int) -> None:
        key = (variant.key, target.info.key)
        if key in failed or (*key, repetition) in done:
            return
        lacking = [t.key for t in _teachers_of(scenario, variant) if (t.key, *key[1:], repetition) not in finished]
        try:
            _Measurement(scenario, store, run_id, target, variant, repetition, baseline_outputs, knobs).run(on_step)
        except TargetError as exc:
            failed.add(key)
            store.end_repetition(run_id, *key, repetition, str(exc))
            store.fail_result(run_id, *key, f"repetition {repetition}: {exc}")
        else:
            if lacking:  # its samples stay; it is not finished, so a resume measures it again beside them
                error = (f"measured without the counters scored against {', '.join(lacking)}, whose repetition did"
                         " not finish on this target; --resume measures them together")
                store.end_repetition(run_id, *key, repetition, error)
                store.fail_result(run_id, *key, f"repetition {repetition}: {error}")
            else:
                finished.add((*key, repetition))
                store.end_repetition(run_id, *key, repetition)

    repetitions = range(scenario.spec.workload.repetitions)
    try:
        if parallel:
            _per_device(targets, store, lambda own, target: [measure(own, target, variant, repetition)
                                                             for repetition in repetitions
                                                             for variant in scenario.variants])
        else:
            for repetition in repetitions:
                for target in targets:
                    for variant in scenario.variants:
                        measure(store, target, variant, repetition)
    except BaseException:
        store.end_run(run_id, "interrupted")  # what was measured stays in the store
        raise
    store.end_run(run_id, "failed" if any(r.status != "ok" for r in store.results(run_id)) else "ok")


def _teachers_of(scenario: Scenario, variant: Variant) -> list[Variant]:
    """The teachers whose same repetition `variant` is scored against: the baseline, and the
    adapter baseline for adapter variants (`Scenario.against`)."""
    return [t for t in dict.fromkeys((scenario.baseline, scenario.against(variant))) if t != variant]


def _per_device(targets: list[Target], store: Store, work: Callable[[Store, Target], object]) -> None:
    """`work` on each target, devices at once, one thread and store connection each. The local
    target goes first and alone: its runners time on this host's cores, which an emulated
    phone's runners would share."""
    local = [t for t in targets if t.info.kind == "local"]
    for target in local:
        work(store, target)
    devices = [t for t in targets if t not in local]
    if not devices:
        return

    def on_device(target: Target) -> None:
        own = store.another()
        try:
            work(own, target)
        finally:
            own.close()

    with ThreadPoolExecutor(len(devices), thread_name_prefix="device") as pool:
        for future in [pool.submit(on_device, target) for target in devices]:
            future.result()


class _BaselineOutputs:
    """What the baseline variant produced, per (target, repetition, prompt): its tokens and teacher data."""

    def __init__(self) -> None:
        self.tokens: dict[tuple[str, int, str], list[int]] = {}
        self.texts: dict[tuple[str, int, str], str] = {}
        self.teachers: dict[tuple[str, int], dict[str, dict]] = {}
        self.reference_teachers: dict[tuple[str, int], dict[str, dict]] = {}  # "<prompt id>/<adapter or ''>"


class _Measurement:
    """One repetition of one variant on one target: one runner process."""

    def __init__(self, scenario: Scenario, store: Store, run_id: str, target: Target, variant: Variant,
                 repetition: int, baseline_outputs: _BaselineOutputs, knobs: dict) -> None:
        self.scenario, self.store, self.run_id = scenario, store, run_id
        self.target, self.variant, self.repetition = target, variant, repetition
        self.baseline = baseline_outputs
        self.knobs = knobs  # the test knobs (harness.measure.environment), whole run
        self.is_baseline = variant == scenario.baseline
        self.is_teacher = variant in scenario.teachers  # scores the accuracy items' references for the others
        self.prompts = {p.id: p for p in scenario.prompts}
        self.style_markers = {name: load_markers(scenario.adapters_dir / name) for name in variant.adapters}

    def run(self, on_step: Step) -> None:
        workload = self.scenario.spec.workload
        reference_teachers = self.baseline.reference_teachers.get((self.target.info.key, self.repetition))
        job = Job(
            model=self.scenario.spec.model,
            variant=self.variant.as_dict(),
            prompts=[p.model_dump() for p in self.scenario.prompts],
            max_new_tokens=workload.max_new_tokens,
            warmup=workload.warmup,
            emit_teacher=self.is_teacher,
            teachers=None if self.is_baseline else self.baseline.teachers.get((self.target.info.key, self.repetition)),
            reference_teachers=None if self.is_teacher else reference_teachers,
            against=None if self.is_teacher else self.scenario.against(self.variant).as_dict(),
            adapters_dir=str(self.scenario.adapters_dir) if self.variant.adapters else None,
            forecast_file=str(self.scenario.forecast_file) if self.variant.drafter == "forecast" else None,
            delay_ms_per_token=self.knobs["delay_ms_per_token"],
            perturb_language=None if self.is_teacher else self.knobs["perturb_language"],
            runtime_settings=self.scenario.runtime_settings(self.variant.runtime),
        )
        for event in self.target.run(job, workload.timeout_s):
            self._handle(event, on_step)

    def _handle(self, event: protocol.Event, on_step: Step) -> None:
        target_key = self.target.info.key
        match event:
            case protocol.Loaded():
                self._store(counters.load_samples(event, self.repetition))
            case protocol.Process():
                self._store(counters.process_samples(event, self.repetition))
            case protocol.Request():
                self._request(event)
                on_step(f"{target_key} {self.variant.key} rep {self.repetition + 1}")
            case protocol.Teacher(prompt_id=prompt_id, teacher=teacher, on="reference", adapter=adapter):
                teachers = self.baseline.reference_teachers.setdefault((target_key, self.repetition), {})
                teachers[f"{prompt_id}/{adapter or ''}"] = teacher
            case protocol.Teacher(prompt_id=prompt_id, teacher=teacher):
                if self.is_baseline:  # the adapter baseline's outputs are not the baseline's
                    self.baseline.teachers.setdefault((target_key, self.repetition), {})[prompt_id] = teacher
            case protocol.Fidelity():
                self._store(counters.fidelity_samples(event, self.repetition))
            case protocol.ReferenceFidelity():
                self._store(counters.reference_fidelity_samples(event, self.repetition))
            case protocol.State(phase=phase, state=state):
                self.store.add_device_state(self.run_id, self.variant.key, target_key, self.repetition, phase, state)
                self._store(counters.device_samples(event, self.repetition))
            case protocol.Counters():
                self._store(counters.target_samples(event, self.repetition), event.warmup)
            case protocol.RemoteJob(record=record):
                self.store.add_job(self.run_id, self.variant.key, target_key, self.repetition, record)
            case _:
                raise TargetError(f"unexpected {event.name!r} event from target {target_key}")

    def _request(self, event: protocol.Request) -> None:
        prompt_id, warmup = event.prompt_id, event.warmup
        key = (self.target.info.key, self.repetition, prompt_id)
        base_model_output = event.adapter is None  # adapter outputs differ from the baseline on purpose
        if self.is_baseline and not warmup and base_model_output:
            self.baseline.tokens[key], self.baseline.texts[key] = event.token_ids, event.text
        samples = counters.request_samples(
            event, self.repetition, self.prompts[prompt_id],
            self._baseline_tokens(key) if base_model_output else None,
            self.style_markers.get(event.adapter),
        )
        self._store(samples, warmup)
        if not warmup:
            self.store.add_output(self.run_id, self.variant.key, self.target.info.key, self.repetition,
                                  prompt_id, event.adapter, event.text, event.token_ids)

    def _baseline_tokens(self, key: tuple[str, int, str]) -> list[int] | None:
        """What the output is compared with. A native tool's token ids are its text re-tokenized
        (it prints no ids), so they meet the baseline's text re-tokenized the same way: equal
        texts agree fully even where the tokenizer segments a text otherwise than it was generated."""
        tokens = self.baseline.tokens.get(key)
        if tokens is None or self.variant.runtime == "reference" or self.scenario.baseline.runtime != "reference":
            return tokens
        ended = bool(tokens) and tokens[-1] == native.eos_id(self.scenario.spec.model)
        return native.text_tokens(self.scenario.spec.model, self.baseline.texts[key], len(tokens), ended)

    def _store(self, samples: list[counters.Sample], warmup: bool = False) -> None:
        self.store.add_samples(self.run_id, self.variant.key, self.target.info.key, samples, warmup)
