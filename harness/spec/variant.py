"""The one definition of a model variant: its axes, their defaults and allowed values.

`Variant` is that definition. The scenario file's three views of it are derived from its
fields: `VariantSpec` (one explicit variant), `VariantMatrix` (a list of values per axis)
and `VariantSelector` (every axis optional), so an axis is added here and nowhere else.
The engine reads the allowed values from here too (`PRECISIONS`, `GRAPHS`, `PREFILLS`).
What each runtime can serve is declared by the runtime (`harness.runtimes.problem`, checked
with these rules when a scenario loads).
"""

from __future__ import annotations

import itertools
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, StringConstraints, create_model

PRECISIONS = ("fp32", "fp16", "int4")
# ds2d: the reference engine's; lookahead, lookup: llama.cpp's draft-free self-speculation;
# ssd: Genie's self-speculative dialog (ssd-q1)
DECODINGS = ("greedy", "ds2d", "lookahead", "lookup", "ssd")
# ds2d's draft source: n-gram matches of the context alone, or also the trained forecast tokens
DRAFTERS = ("ngram", "forecast")
RUNTIMES = ("reference", "llamacpp", "genie", "executorch")  # what serves the variant (harness/runtimes/)
LORA_MODES = ("runtime", "merged")  # runtime: adapter bank as forward inputs; merged: weights merged per adapter
PREFILLS = ("per_stream", "shared")  # multi-stream prompt mode: per stream (exact) or shared
GRAPHS = ("eager", "compiled")  # the decode step run op by op, or compiled by torch.compile
# a name that becomes part of a device path, a file name and a tool's command line (adapters)
SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
AdapterName = Annotated[str, StringConstraints(pattern=SAFE_NAME)]


def _axis(default: object, allowed: tuple | type) -> Any:
    """A Variant field: its default and what a scenario may give (a tuple of names, or a type)."""
    return field(default=default, metadata={"allowed": allowed})


@dataclass(frozen=True, order=True)
class Variant:
    """One model variant: how the weights are held and how tokens are generated.

    `adapters` with one stream: the requests switch between the adapters (task switching);
    with K streams: stream i runs adapter i, all K advanced by one batched forward per step.
    """

    precision: str = _axis("fp32", PRECISIONS)
    streams: int = _axis(1, PositiveInt)
    decoding: str = _axis("greedy", DECODINGS)
    adapters: tuple[str, ...] = _axis((), list[AdapterName])
    lora_mode: str = _axis("runtime", LORA_MODES)
    prefill: str = _axis("per_stream", PREFILLS)
    graph: str = _axis("eager", GRAPHS)  # compiled: local and adb targets
    runtime: str = _axis("reference", RUNTIMES)
    drafter: str = _axis("ngram", DRAFTERS)  # forecast: the scenario's forecast_dir holds the tokens

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
        if self.runtime != "reference":
            parts.append(self.runtime)
        if self.drafter != "ngram":
            parts.append(self.drafter)
        return "-".join(parts)

    def as_dict(self) -> dict:
        return {**asdict(self), "adapters": list(self.adapters)}

    @classmethod
    def from_dict(cls, values: dict) -> Variant:
        return cls(**{**values, "adapters": tuple(values.get("adapters", ()))})

    def problem(self) -> str | None:
        """Why no runtime could serve this combination, or None (checked at load, not half-way
        through a run); what each runtime serves is its own (`harness.runtimes.problem`)."""
        if self.streams > 1 and len(self.adapters) not in (0, self.streams):
            return f"{self.streams} streams need {self.streams} adapters (one per stream) or none"
        if self.lora_mode == "merged" and (self.streams > 1 or not self.adapters):
            return "lora_mode 'merged' needs adapters and one stream (merged weights serve one adapter at a time)"
        if self.prefill == "shared" and self.streams == 1:
            return "prefill 'shared' needs more than one stream"
        if self.drafter != "ngram" and self.decoding != "ds2d":
            return f"drafter {self.drafter!r} drafts for decoding 'ds2d' only"
        return None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _scenario_type(allowed: tuple | type) -> Any:
    return Literal[allowed] if isinstance(allowed, tuple) else allowed  # Literal[("a", "b")] == Literal["a", "b"]


def _file_default(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


_AXES = {f.name: (_scenario_type(f.metadata["allowed"]), _file_default(f.default))
         for f in fields(Variant) if f.default is not MISSING}

VariantSpec = create_model(
    "VariantSpec", __base__=Strict, __doc__="One explicit variant (an `include` entry).",
    **{name: (kind, default) for name, (kind, default) in _AXES.items()})


class _Matrix(Strict):
    """Every combination of the axes, plus the explicit variants under `include`."""

    include: list[VariantSpec] = []  # type: ignore[valid-type]

    def expand(self) -> list[Variant]:
        axes = [getattr(self, name) for name in _AXES]
        variants = [Variant.from_dict(dict(zip(_AXES, values))) for values in itertools.product(*axes)]
        variants += [Variant.from_dict(spec.model_dump()) for spec in self.include]
        return list(dict.fromkeys(variants))  # drop duplicates, keep order


VariantMatrix = create_model(
    "VariantMatrix", __base__=_Matrix,
    **{name: (list[kind], Field(default=[default], min_length=1)) for name, (kind, default) in _AXES.items()})


class _Selector(Strict):
    """Picks variants by the fields given; fields left out match anything."""

    def matches(self, variant: Variant) -> bool:
        wanted = self.model_dump(exclude_none=True)
        return all(variant.as_dict()[k] == v for k, v in wanted.items())


VariantSelector = create_model(
    "VariantSelector", __base__=_Selector, **{name: (kind | None, None) for name, (kind, _) in _AXES.items()})
