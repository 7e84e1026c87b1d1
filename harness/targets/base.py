"""What every target is: its identity (`TargetInfo`), how it runs a job (`Target`), how it fails.

A target starts the runner for a job and yields the events of `harness.run.protocol`:
the runner's, with `Process` and `State` (which the target measures itself) in place of
`Measured`. A target that runs no runner (aihub) yields `Counters` and `RemoteJob`
instead. Anything that stops a run early raises `TargetError`; what was yielded before
it is stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Protocol

from harness.run.protocol import Event, Job


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

    def run(self, job: Job, timeout_s: float) -> Iterator[Event]: ...
