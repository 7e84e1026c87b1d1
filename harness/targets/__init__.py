"""Targets: where a variant runs. Each kind is a plug-in registered in `KINDS`.

A target starts the runner for a job and yields its events (see `harness.runner`); in
place of the runner's "measured" event it yields `{"event": "process", "peak_rss_bytes":
..., "pss_bytes": ...}`, which the target measures itself. Device targets also yield
`{"event": "device", "phase": "before"|"after", "state": {...}}` (and "energy_j" after).
Anything that stops a run early raises `TargetError`.

A target that does not run the runner (aihub) yields its own measurements instead:
`{"event": "counters", "prompt_id": id or None, "counters": {metric: value or [values]}}`
and `{"event": "job", ...}` records of remote jobs (ids, links), stored with the result.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Callable, Protocol

from harness.runner import Job


class TargetError(Exception):
    """A run failed on the target: runner crash, timeout, lost device. Stored as data."""


@dataclass(frozen=True)
class TargetInfo:
    kind: str
    name: str
    serial: str | None
    model: str | None
    soc: str | None
    emulated: bool
    # Android identity (adb targets); left out of as_dict() when unknown
    platform: str | None = None
    fingerprint: str | None = None
    sdk: str | None = None

    @property
    def key(self) -> str:
        return self.kind if self.kind == self.name else f"{self.kind}:{self.name}"

    def as_dict(self) -> dict:
        optional = ("platform", "fingerprint", "sdk")
        return {k: v for k, v in asdict(self).items() if v is not None or k not in optional}


class Target(Protocol):
    info: TargetInfo

    def run(self, job: Job, timeout_s: float) -> Iterator[dict]: ...


def _local(argument: str | None, settings: object = None) -> list[Target]:
    from harness.targets.local import LocalTarget

    return [LocalTarget()]


def _adb(argument: str | None, settings: object = None) -> list[Target]:
    from harness.targets.adb import open_adb_targets

    targets = open_adb_targets(argument)
    if not targets:
        raise ValueError("adb: no device attached to the adb server (harness devices lists them)")
    return targets


def _aihub(argument: str | None, settings: object = None) -> list[Target]:
    from harness.scenario import AiHubSettings
    from harness.targets.aihub import AiHubTarget

    return [AiHubTarget(argument or "", settings or AiHubSettings())]


# kind -> factory(argument after "kind:", the scenario's settings for that kind or None)
KINDS: dict[str, Callable[[str | None, object], list[Target]]] = {"local": _local, "adb": _adb, "aihub": _aihub}
NEEDS_ARGUMENT = {"aihub": 'a device name, e.g. aihub:"Samsung Galaxy S24 (Family)"'}


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
