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
MODELS = ("smollm2-135m-instruct",)

# What the reference engine can run today; declared values outside this are rejected
# with "not supported yet" instead of failing half-way through a run.
SUPPORTED = {"precision": {"fp32", "fp16"}, "streams": {1}, "decoding": {"greedy"}}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, order=True)
class Variant:
    """One point of the variant matrix."""

    precision: str
    streams: int = 1
    decoding: str = "greedy"
    adapters: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        parts = [self.precision, f"s{self.streams}", self.decoding]
        if self.adapters:
            parts.append("+".join(self.adapters))
        return "-".join(parts)

    def as_dict(self) -> dict:
        return {
            "precision": self.precision,
            "streams": self.streams,
            "decoding": self.decoding,
            "adapters": list(self.adapters),
        }


class VariantMatrix(Strict):
    precision: list[Precision] = Field(default=["fp32"], min_length=1)
    streams: list[PositiveInt] = Field(default=[1], min_length=1)
    decoding: list[Decoding] = Field(default=["greedy"], min_length=1)
    adapters: list[list[str]] = Field(default=[[]], min_length=1)

    @model_validator(mode="after")
    def _supported(self) -> VariantMatrix:
        for field, allowed in SUPPORTED.items():
            for value in getattr(self, field):
                if value not in allowed:
                    raise ValueError(
                        f"{field} {value!r} is not supported yet; supported: "
                        + ", ".join(str(v) for v in sorted(allowed, key=str))
                    )
        if any(self.adapters):
            raise ValueError("adapters are not supported yet; supported: []")
        return self

    def expand(self) -> list[Variant]:
        return [
            Variant(p, s, d, tuple(a))
            for p, s, d, a in itertools.product(self.precision, self.streams, self.decoding, self.adapters)
        ]


class VariantSelector(Strict):
    """Picks variants by the fields given; fields left out match anything."""

    precision: Precision | None = None
    streams: PositiveInt | None = None
    decoding: Decoding | None = None
    adapters: list[str] | None = None

    def matches(self, variant: Variant) -> bool:
        wanted = self.model_dump(exclude_none=True)
        return all(variant.as_dict()[k] == v for k, v in wanted.items())


class Workload(Strict):
    prompts: Path
    max_new_tokens: PositiveInt = 32
    repetitions: PositiveInt = 3
    warmup: NonNegativeInt = 1
    timeout_s: PositiveFloat = 600.0  # per runner process; a run past it is killed and stored as failed


class Budget(Strict):
    """A hard gate on one metric: an absolute bound or a ratio to the baseline.

    `stat: mean` suits 0/1 counters such as exact_match, where the mean is the accuracy.
    """

    metric: str
    variant: VariantSelector = VariantSelector()
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


class ScenarioFile(Strict):
    name: str = Field(min_length=1)
    description: str = ""
    model: Literal[MODELS] = MODELS[0]  # type: ignore[valid-type]
    variants: VariantMatrix = VariantMatrix()
    baseline: VariantSelector = VariantSelector()
    workload: Workload
    targets: list[str] = Field(default=["local"], min_length=1)
    budgets: list[Budget] = []

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
    baseline = _pick_baseline(path, spec.baseline, variants)
    # Baseline first: agreement_with_baseline for the others can then be computed
    # as soon as each of their samples exists.
    variants.remove(baseline)
    variants.insert(0, baseline)

    digest = hashlib.sha256(text.encode() + prompts_path.read_bytes()).hexdigest()
    return Scenario(path, spec, prompts, variants, baseline, digest)


def _pick_baseline(path: Path, selector: VariantSelector, variants: list[Variant]) -> Variant:
    chosen = [v for v in variants if selector.matches(v)]
    if len(chosen) != 1:
        raise HarnessError(
            f"{path}: baseline: must select exactly one variant, selects {len(chosen)}; "
            f"variants: {', '.join(v.key for v in variants)}"
        )
    return chosen[0]
