"""Scenario files: which model variants to measure, on which targets, with which workload.

A scenario is YAML validated by pydantic. Every error is one line naming the file, the
field path and what is allowed (see `load_scenario`).
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from harness.errors import HarnessError
from harness.metrics import METRICS
from harness.prompts import Prompt, describe_validation_error, load_prompts

Precision = Literal["fp32", "fp16", "int4"]
Decoding = Literal["greedy", "ds2d"]
LoraMode = Literal["runtime", "merged"]
Prefill = Literal["per_stream", "shared"]
Graph = Literal["eager", "compiled"]  # the engine's decode step: op by op, or compiled by torch.compile
MODELS = ("smollm2-135m-instruct",)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, order=True)
class Variant:
    """One model variant: how the weights are held and how tokens are generated.

    `adapters` with one stream: the requests switch between the adapters (task switching);
    with K streams: stream i runs adapter i, all K advanced by one batched forward per step.
    """

    precision: str
    streams: int = 1
    decoding: str = "greedy"
    adapters: tuple[str, ...] = ()
    lora_mode: str = "runtime"  # runtime: adapter bank as forward inputs; merged: weights merged per adapter
    prefill: str = "per_stream"  # multi-stream prompt mode: per_stream (exact) or shared
    graph: str = "eager"  # decode step run op by op, or compiled (local and adb targets)

    @property
    def key(self) -> str:
        parts = [self.precision, f"s{self.streams}", self.decoding]
        if self.adapters:
            parts.append("+".join(self.adapters))
        if self.lora_mode != "runtime":
            parts.append(self.lora_mode)
        if self.prefill != "per_stream":
            parts.append(f"{self.prefill}-prefill")
        if self.graph != "eager":
            parts.append(self.graph)
        return "-".join(parts)

    def as_dict(self) -> dict:
        return {
            "precision": self.precision,
            "streams": self.streams,
            "decoding": self.decoding,
            "adapters": list(self.adapters),
            "lora_mode": self.lora_mode,
            "prefill": self.prefill,
            "graph": self.graph,
        }

    @classmethod
    def from_dict(cls, fields: dict) -> Variant:
        return cls(**{**fields, "adapters": tuple(fields.get("adapters", ()))})

    def problem(self) -> str | None:
        """Why this combination cannot run, or None (checked at load, not half-way through a run)."""
        if self.streams > 1 and len(self.adapters) not in (0, self.streams):
            return f"{self.streams} streams need {self.streams} adapters (one per stream) or none"
        if self.streams > 1 and self.decoding != "greedy":
            return f"decoding {self.decoding!r} runs one stream; multi-stream decoding is greedy"
        if self.lora_mode == "merged" and (self.streams > 1 or not self.adapters):
            return "lora_mode 'merged' needs adapters and one stream (merged weights serve one adapter at a time)"
        if self.lora_mode == "merged" and self.precision == "int4":
            return "lora_mode 'merged' needs fp32 or fp16 weights (merging into int4 would requantize)"
        if self.adapters and self.decoding != "greedy":
            return f"decoding {self.decoding!r} with adapters is not supported yet; supported: greedy"
        if self.prefill == "shared" and self.streams == 1:
            return "prefill 'shared' needs more than one stream"
        if self.graph == "compiled" and (self.streams > 1 or self.decoding != "greedy" or self.adapters):
            return ("graph 'compiled' is not supported yet with streams, DS2D or adapters; "
                    "supported: one stream, greedy, no adapters")
        return None


class VariantSpec(Strict):
    """One explicit variant (an `include` entry)."""

    precision: Precision = "fp32"
    streams: PositiveInt = 1
    decoding: Decoding = "greedy"
    adapters: list[str] = []
    lora_mode: LoraMode = "runtime"
    prefill: Prefill = "per_stream"
    graph: Graph = "eager"


class VariantMatrix(Strict):
    """Every combination of the axes, plus the explicit variants under `include`."""

    precision: list[Precision] = Field(default=["fp32"], min_length=1)
    streams: list[PositiveInt] = Field(default=[1], min_length=1)
    decoding: list[Decoding] = Field(default=["greedy"], min_length=1)
    adapters: list[list[str]] = Field(default=[[]], min_length=1)
    lora_mode: list[LoraMode] = Field(default=["runtime"], min_length=1)
    prefill: list[Prefill] = Field(default=["per_stream"], min_length=1)
    graph: list[Graph] = Field(default=["eager"], min_length=1)
    include: list[VariantSpec] = []

    @model_validator(mode="after")
    def _runnable(self) -> VariantMatrix:
        for variant in self.expand():
            if problem := variant.problem():
                raise ValueError(f"variant {variant.key}: {problem}")
        return self

    def expand(self) -> list[Variant]:
        axes = (self.precision, self.streams, self.decoding, self.adapters, self.lora_mode, self.prefill, self.graph)
        variants = [Variant(p, s, d, tuple(a), m, f, g) for p, s, d, a, m, f, g in itertools.product(*axes)]
        variants += [Variant.from_dict(spec.model_dump()) for spec in self.include]
        return list(dict.fromkeys(variants))  # drop duplicates, keep order


class VariantSelector(Strict):
    """Picks variants by the fields given; fields left out match anything."""

    precision: Precision | None = None
    streams: PositiveInt | None = None
    decoding: Decoding | None = None
    adapters: list[str] | None = None
    lora_mode: LoraMode | None = None
    prefill: Prefill | None = None
    graph: Graph | None = None

    def matches(self, variant: Variant) -> bool:
        wanted = self.model_dump(exclude_none=True)
        return all(variant.as_dict()[k] == v for k, v in wanted.items())


class Workload(Strict):
    prompts: Path
    max_new_tokens: PositiveInt = 32
    repetitions: PositiveInt = 3
    warmup: NonNegativeInt = 1
    timeout_s: PositiveFloat = 600.0  # per runner process; a run past it is killed and stored as failed


class DeviceRules(Strict):
    """Device hygiene before each runner process on device targets (adb): cool down until
    the thermal status and every temperature are at most these, waiting up to cooldown_s."""

    max_thermal_status: int = Field(default=1, ge=0, le=6)  # 0 none, 1 light, 2 moderate, 3 severe...
    max_temp_c: PositiveFloat = 45.0
    cooldown_s: NonNegativeInt = 300
    charging: Literal["warn", "fail"] = "warn"  # a device on USB/AC power


class Budget(Strict):
    """A hard gate on one metric: an absolute bound, or a ratio to another variant.

    Ratios are taken against the variant `against` selects (default: the baseline), on
    the same target. `kind` restricts the samples to prompts of that kind. `stat: mean`
    suits 0/1 counters such as exact_match, where the mean is the accuracy.
    """

    metric: str
    variant: VariantSelector = VariantSelector()
    against: VariantSelector | None = None
    kind: str | None = None
    stat: Literal["median", "mean"] = "median"
    max: float | None = None
    min: float | None = None
    max_ratio: float | None = Field(default=None, gt=0)
    min_ratio: float | None = Field(default=None, gt=0)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, name: str) -> str:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; allowed: {', '.join(METRICS)}")
        return name

    @model_validator(mode="after")
    def _one_bound(self) -> Budget:
        bounds = [k for k in ("max", "min", "max_ratio", "min_ratio") if getattr(self, k) is not None]
        if len(bounds) != 1:
            raise ValueError("give exactly one of max, min, max_ratio, min_ratio")
        return self

    @property
    def bound(self) -> tuple[str, float]:
        for kind in ("max", "min", "max_ratio", "min_ratio"):
            value = getattr(self, kind)
            if value is not None:
                return kind, value
        raise AssertionError("validated to have one bound")


class AiHubSettings(Strict):
    """How the aihub target uses Qualcomm AI Hub (harness/targets/aihub.py)."""

    profile: str | None = None  # qai-hub client profile (~/.qai_hub/<profile>.ini); default: its client.ini
    target_runtime: Literal["qnn_context_binary", "onnx", "precompiled_qnn_onnx", "qnn_dlc", "tflite"] = \
        "qnn_context_binary"
    prefill_chunk: PositiveInt = 128  # prompt tokens per prefill graph call (Qualcomm's AR-128)


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
    model: Literal[MODELS] = MODELS[0]  # type: ignore[valid-type]
    variants: VariantMatrix = VariantMatrix()
    baseline: VariantSelector = VariantSelector()
    workload: Workload
    targets: list[str] = Field(default=["local"], min_length=1)
    budgets: list[Budget] = []
    device: DeviceRules = DeviceRules()
    compare: CompareSpec = CompareSpec()
    adapters_dir: Path = Path("../fixtures/adapters")  # adapter names are PEFT folders here
    aihub: AiHubSettings = AiHubSettings()

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, targets: list[str]) -> list[str]:
        from harness.targets import check_target_spec

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

    @property
    def name(self) -> str:
        return self.spec.name


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"{path}: scenario file not found")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise HarnessError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    try:
        spec = ScenarioFile.model_validate(raw)
    except ValidationError as exc:
        raise HarnessError(f"{path}: {describe_validation_error(exc)}") from None

    prompts_path = (path.parent / spec.workload.prompts).resolve()
    if not prompts_path.is_file():
        raise HarnessError(f"{path}: workload.prompts: file not found: {prompts_path}")
    prompts = load_prompts(prompts_path)

    variants = spec.variants.expand()
    baseline = _pick(path, "baseline", spec.baseline, variants)
    for number, budget in enumerate(spec.budgets):
        if budget.against is not None:
            _pick(path, f"budgets.{number}.against", budget.against, variants)
        if budget.kind is not None and budget.kind not in {p.kind for p in prompts}:
            raise HarnessError(f"{path}: budgets.{number}.kind: no prompt of kind {budget.kind!r}; "
                               f"kinds: {', '.join(sorted({p.kind for p in prompts}))}")
    adapters_dir = (path.parent / spec.adapters_dir).resolve()
    _check_adapters(path, adapters_dir, variants)
    # Baseline first: agreement_with_baseline and kld_vs_baseline are then computed as soon
    # as each sample exists.
    variants.sort(key=lambda v: v != baseline)

    digest = hashlib.sha256(text.encode() + prompts_path.read_bytes()).hexdigest()
    return Scenario(path, spec, prompts, variants, baseline, digest, adapters_dir)


def _pick(path: Path, field: str, selector: VariantSelector, variants: list[Variant]) -> Variant:
    chosen = [v for v in variants if selector.matches(v)]
    if len(chosen) != 1:
        raise HarnessError(
            f"{path}: {field}: must select exactly one variant, selects {len(chosen)}; "
            f"variants: {', '.join(v.key for v in variants)}"
        )
    return chosen[0]


def _check_adapters(path: Path, adapters_dir: Path, variants: list[Variant]) -> None:
    available = sorted(p.parent.name for p in adapters_dir.glob("*/adapter_config.json"))
    for variant in variants:
        for name in variant.adapters:
            if name not in available:
                raise HarnessError(f"{path}: variants: unknown adapter {name!r} in {adapters_dir}; "
                                   f"available: {', '.join(available) or 'none'}")
