"""What one run of a native tool printed, read into its own numbers, the counters they give and its texts."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ToolReport:
    """`fields` keeps every number the tool printed under its own wording ("eval time ms",
    "n_accept"), so nothing it said is lost. `counters` holds only the registry counters
    (`measure/metrics.yaml`) that those numbers give as the registry defines them, and
    `sources` names, per counter, the printed numbers it comes from. A counter the output
    does not give is absent, never estimated."""

    tool: str
    fields: dict[str, float]
    counters: dict[str, float] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)  # generated text, one per sequence
    version: str | None = None


class ToolOutputError(ValueError):
    """The output lacks what the tool always prints (a crash, a cut or garbled stream)."""

    def __init__(self, tool: str, missing: str, stderr: str):
        tail = "\n".join(stderr.strip().splitlines()[-5:]) or "(stderr empty)"
        super().__init__(f"{tool}: no {missing} in its output (crashed, cut short or garbled); "
                         f"its last stderr lines:\n{tail}")


def counters(found: dict[str, tuple[float | None, str]], tool: str) -> tuple[dict[str, float], dict[str, str]]:
    """{counter: (value or None, which printed numbers)} -> (counters, sources), the Nones left out."""
    values = {name: value for name, (value, _) in found.items() if value is not None}
    return values, {name: f"{tool}: {found[name][1]}" for name in values}


def rate(count: float, ms: float) -> float | None:
    """count per second over ms milliseconds; None when either is not positive."""
    return count / ms * 1e3 if count > 0 and ms > 0 else None
