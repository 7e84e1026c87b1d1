"""The runner protocol: the job a runner is given, and the typed events that come back.

On the wire each event is one JSON line, `{"event": NAME, **fields}`; `parse` is the one
place a line becomes an event and `line` the one place an event becomes a line.

The runner (`harness.run.runner`) sends, in order:
`Loaded`, one `Request` per output, `Measured` (the timed work is over), then the
untimed fidelity work (`Teacher` from the baseline, `Fidelity` from the others), `Done`;
or `Error` at any point. After `Done` it waits for stdin to close, so the target can
still read its memory.

Targets pass those on, except `Measured`, in whose place they send what they measured
themselves: `Process` (the runner's memory) and `State` (host or device state, before
and after). A target that runs no runner (aihub), or a native tool (`harness.run.native`),
sends `Counters` and `RemoteJob` records instead.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar


@dataclass(frozen=True)
class Job:
    model: str
    variant: dict  # Variant.as_dict()
    prompts: list[dict]  # Prompt fields: id, prompt, template, ...
    max_new_tokens: int
    warmup: int
    emit_teacher: bool = False  # the baseline: send top-k log-probs of its outputs
    teachers: dict[str, dict] | None = None  # prompt id -> the baseline's Teacher, to score KL against
    # accuracy suite items: "<prompt id>/<adapter or ''>" -> the baseline's Teacher on the item's reference
    reference_teachers: dict[str, dict] | None = None
    against: dict | None = None  # the variant the accuracy items score this one against (native runtimes run it too)
    adapters_dir: str | None = None  # where the variant's adapters (PEFT folders) are
    forecast_file: str | None = None  # DS2D's forecast tokens, for drafter 'forecast'
    delay_ms_per_token: float = 0.0  # test knob: sleep after each decode step (see harness.measure.environment)
    perturb_language: str | None = None  # test knob: damage this language's tokens (harness.measure.environment)
    runtime_settings: dict | None = None  # the scenario's block for a native runtime (llamacpp:, genie:, ...)

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Job:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


class ProtocolError(ValueError):
    """A line that is not an event of this protocol (garbled or foreign output)."""


EVENTS: dict[str, type[Event]] = {}  # wire name -> event class, filled as each class is defined


@dataclass(frozen=True)
class Event:
    name: ClassVar[str]  # on the wire: {"event": name, **fields}

    def __init_subclass__(cls, name: str = "", **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = name
        EVENTS[name] = cls


@dataclass(frozen=True)
class Loaded(Event, name="loaded"):
    load_ms: float
    weights_bytes: int
    kv_cache_bytes: int
    adapter_bytes: int = 0
    engine: dict = field(default_factory=dict)  # name, versions, threads (not stored yet)


@dataclass(frozen=True)
class Request(Event, name="sample"):
    """One output of one request (one per adapter or stream)."""

    prompt_id: str
    warmup: bool
    prompt_tokens: int
    token_ids: list[int]
    text: str
    token_times_s: list[float]  # from request start, one per generated token; [] from a native tool (it gives none)
    e2e_s: float | None  # None from a native tool: it times prompt eval and eval, not the request
    adapter: str | None = None
    stats: dict = field(default_factory=dict)  # technique counters measured in the runner (metrics.STATS_METRICS)


@dataclass(frozen=True)
class Measured(Event, name="measured"):
    """The timed work is over: the target reads the runner's memory now."""


@dataclass(frozen=True)
class Teacher(Event, name="teacher"):
    """The baseline's top-k log-probs along its own output (`on` "output"), for the others' KL,
    or along an accuracy item's reference (`on` "reference", per adapter)."""

    prompt_id: str
    teacher: dict  # engine.fidelity.Teacher fields
    on: str = "output"
    adapter: str | None = None


@dataclass(frozen=True)
class ReferenceFidelity(Event, name="reference_fidelity"):
    """This variant against the baseline's teacher on an item's reference, after the timed work."""

    prompt_id: str
    kld: list[float]  # per reference position
    top1_agreement: float
    ppl_ratio: float
    adapter: str | None = None


@dataclass(frozen=True)
class Fidelity(Event, name="fidelity"):
    """KL(baseline || this variant) on one prompt, scored after the timed work."""

    prompt_id: str
    kld: float


@dataclass(frozen=True)
class Done(Event, name="done"):
    """The runner is finished; it exits once its stdin is closed."""


@dataclass(frozen=True)
class Error(Event, name="error"):
    """The runner failed; what it measured before stays stored."""

    error: str


@dataclass(frozen=True)
class Process(Event, name="process"):
    """The runner process's memory, read by the target: its peak while serving (VmHWM, reset
    when the model was loaded) and PSS after the timed work, and its peak up to the model
    being loaded."""

    peak_rss_bytes: int
    pss_bytes: int | None = None
    load_peak_rss_bytes: int | None = None


@dataclass(frozen=True)
class State(Event, name="device"):
    """Host or device state before or after a runner process; `energy_j` on battery after it."""

    phase: str  # "before" | "after"
    state: dict
    energy_j: float | None = None


@dataclass(frozen=True)
class Counters(Event, name="counters"):
    """Measurements a target made itself (aihub) or a native tool reported: metric -> value or list of values."""

    prompt_id: str | None
    counters: dict
    adapter: str | None = None
    warmup: bool = False


@dataclass(frozen=True)
class RemoteJob(Event, name="job"):
    """A record of a remote job (AI Hub's ids and links, an export's digest), stored with the result."""

    record: dict


def line(event: Event) -> str:
    """The event as one JSON line."""
    return json.dumps({"event": event.name, **asdict(event)}) + "\n"


def parse(text: str) -> Event:
    """One JSON line -> its event; ProtocolError naming what is wrong otherwise.

    Fields the event does not have are ignored, so a newer runner's extra fields do not
    break an older harness; a missing field is an error.
    """
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON ({exc.msg}): {text.strip()[:120]!r}") from None
    if not isinstance(values, dict) or values.get("event") not in EVENTS:
        raise ProtocolError(f"not an event of the runner protocol: {text.strip()[:120]!r}")
    cls = EVENTS[values.pop("event")]
    known = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in values.items() if k in known})
    except TypeError as exc:
        raise ProtocolError(f"{cls.name} event: {exc}") from None
