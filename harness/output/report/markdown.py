"""The Markdown summary of a comparison, for a CI step summary (GitHub's $GITHUB_STEP_SUMMARY)."""

from __future__ import annotations

from collections import Counter

from harness.analysis.compare import FDR, VERDICTS, Change
from harness.output.format import fmt


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _knob(document: dict) -> str | None:
    delay = document["environment"].get("test_delay_ms_per_token")
    if not delay:
        return None
    return f"> **Run {document['run_id']} was slowed on purpose** (test delay {delay:g} ms per decode step)."


def markdown_summary(baseline: dict, current: dict, changes: list[Change], against: str) -> str:
    counts = Counter(c.verdict for c in changes)
    tally = ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts[v])
    lines = [
        f"## hil-harness compare: {_cell(current['scenario']['name'])}",
        "",
        f"Run `{current['run_id']}` against `{baseline['run_id']}` ({_cell(against)}): {tally or 'nothing to compare'}.",
    ]
    lines += [""] + [k for k in (_knob(baseline), _knob(current)) if k]
    lines += ["", f"Estimates are medians over runner processes; p is Mann-Whitney U on the process values, "
              f"q its Benjamini-Hochberg false-discovery value over all {len(changes)} comparisons (significant: "
              f"q < {FDR:g}); a change counts when it is significant and at least the floor."]
    if any(c.emulated for c in changes):
        lines += ["", "Targets marked *(emulated)* are emulated devices or services, not real hardware."]
    header = ["", "| verdict | metric | variant | target | baseline | current | ratio | interval | rests on | p | q | floor |",
              "|---|---|---|---|---:|---:|---:|---|---|---:|---:|---:|"]
    notable = [c for c in changes if c.verdict not in ("unchanged", "too few processes")]
    if notable:
        lines += header + [_row(c) for c in sorted(notable, key=lambda c: VERDICTS.index(c.verdict))]
    lines += ["", f"<details><summary>All {len(changes)} comparisons</summary>", ""]
    lines += header[1:] + [_row(c) for c in changes] + ["", "</details>", ""]
    return "\n".join(lines)


def _row(c: Change) -> str:
    verdict = f"**{c.verdict}**" if c.verdict == "regressed" else c.verdict
    if c.environment:
        verdict += f" ({c.environment})"
    target = c.target + (" *(emulated)*" if c.emulated else "")
    cells = [verdict, c.metric, c.variant, target, fmt(c.baseline), fmt(c.current), fmt(c.ratio.value),
             f"[{fmt(c.interval[0])}, {fmt(c.interval[1])}]", c.ratio.basis, fmt(c.p_value), fmt(c.q_value),
             f"{c.floor:.0%}"]
    return "| " + " | ".join(_cell(x) for x in cells) + " |"
