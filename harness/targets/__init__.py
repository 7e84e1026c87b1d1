"""Targets: where a variant runs. Each kind is a plug-in registered in `KINDS`.

A target starts the runner for a job and yields its events (see `harness.runner`); in
place of the runner's "measured" event it yields `{"event": "process", "peak_rss_bytes":
...}`, which the target measures itself. Anything that stops a run early raises
`TargetError`.
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

    @property
    def key(self) -> str:
        return self.kind if self.kind == self.name else f"{self.kind}:{self.name}"

    def as_dict(self) -> dict:
        return asdict(self)


class Target(Protocol):
    info: TargetInfo

    def run(self, job: Job, timeout_s: float) -> Iterator[dict]: ...


def _local(argument: str | None) -> list[Target]:
    from harness.targets.local import LocalTarget

    return [LocalTarget()]


KINDS: dict[str, Callable[[str | None], list[Target]]] = {"local": _local}
PLANNED = ("adb", "aihub")  # declared by the design, not built yet


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
