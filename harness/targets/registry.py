"""The registry of target kinds: `--target` and a scenario's `targets:` name one of `KINDS`.

A kind is a factory: the argument after "kind:" (or None) and the scenario's settings block
for that kind (or None) -> the targets it opens. Adding a target kind is one module under
`harness/targets/` and one entry here.
"""

from __future__ import annotations

from typing import Callable

from harness.spec import variant
from harness.targets.adb.target import open_adb_targets
from harness.targets import aihub
from harness.targets.aihub import AiHubSettings, AiHubTarget
from harness.targets.base import Target
from harness.targets.local import LocalTarget


def _local(argument: str | None, settings: object = None) -> list[Target]:
    return [LocalTarget()]


def _adb(argument: str | None, settings: object = None) -> list[Target]:
    targets = open_adb_targets(argument)
    if not targets:
        raise ValueError("adb: no device attached to the adb server (harness devices lists them)")
    return targets


def _aihub(argument: str | None, settings: object = None) -> list[Target]:
    return [AiHubTarget(argument or "", settings or AiHubSettings())]


KINDS: dict[str, Callable[[str | None, object], list[Target]]] = {"local": _local, "adb": _adb, "aihub": _aihub}
NEEDS_ARGUMENT = {"aihub": 'a device name, e.g. aihub:"Samsung Galaxy S24 (Family)"'}
# The runtimes each kind runs: this host runs our engine and llama.cpp's host build; a phone
# (or an emulated one) every runtime; AI Hub compiles our engine's exported graph.
RUNTIMES = {"local": ("reference", "llamacpp"), "adb": variant.RUNTIMES, "aihub": ("reference",)}


def runtime_problem(spec: str, runtime: str) -> str | None:
    """Why target `spec` cannot run `runtime`, or None."""
    kind = spec.partition(":")[0]
    if runtime in RUNTIMES[kind]:
        return None
    where = [k for k, runtimes in RUNTIMES.items() if runtime in runtimes]
    return f"target {spec!r} cannot run runtime {runtime!r}; it runs on: {', '.join(where)}"


def variant_problem(spec: str, variant: dict) -> str | None:
    """Why target `spec` cannot run this variant (beyond its runtime), or None."""
    return aihub.unsupported(variant) if spec.partition(":")[0] == "aihub" else None


def check_target_spec(spec: str) -> None:
    """Raise ValueError unless `spec` ('kind' or 'kind:argument') names a known kind."""
    kind, _, argument = spec.partition(":")
    if kind in NEEDS_ARGUMENT and not argument.strip():
        raise ValueError(f"target {spec!r} needs {NEEDS_ARGUMENT[kind]}")
    if kind not in KINDS:
        raise ValueError(f"unknown target {spec!r}; allowed: {', '.join(KINDS)}")


def open_targets(spec: str, settings: object = None) -> list[Target]:
    """The targets `spec` names; `settings` is the scenario's block for that kind (e.g. `aihub:`)."""
    check_target_spec(spec)
    kind, _, argument = spec.partition(":")
    return KINDS[kind](argument or None, settings)
