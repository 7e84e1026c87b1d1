"""Targets: where a variant runs. Each kind is a plug-in registered in `KINDS`.

A target starts the runner for a job and yields its events (see `harness.runner`); in
place of the runner's "measured" event it yields `{"event": "process", "peak_rss_bytes":
..., "pss_bytes": ...}`, which the target measures itself. Device targets also yield
`{"event": "device", "phase": "before"|"after", "state": {...}}` (and "energy_j" after).
Anything that stops a run early raises `TargetError`.
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


def _local(argument: str | None) -> list[Target]:
    from harness.targets.local import LocalTarget

    return [LocalTarget()]


def _adb(argument: str | None) -> list[Target]:
    from harness.targets.adb import open_adb_targets

    targets = open_adb_targets(argument)
    if not targets:
        raise ValueError("adb: no device attached to the adb server (harness devices lists them)")
    return targets


KINDS: dict[str, Callable[[str | None], list[Target]]] = {"local": _local, "adb": _adb}
PLANNED = ("aihub",)  # declared by the design, not built yet


def check_target_spec(spec: str) -> None:
    """Raise ValueError unless `spec` ('kind' or 'kind:argument') names a known kind."""
    kind = spec.split(":", 1)[0]
    if kind in KINDS:
        return
    if kind in PLANNED:
        raise ValueError(f"target {spec!r} is not supported yet; supported: {', '.join(KINDS)}")
    raise ValueError(f"unknown target {spec!r}; allowed: {', '.join(KINDS)}")


def open_targets(spec: str) -> list[Target]:
    check_target_spec(spec)
    kind, _, argument = spec.partition(":")
    return KINDS[kind](argument or None)
