"""Numbers as people read them, the same in the terminal, Markdown, JUnit properties and HTML."""

from __future__ import annotations

import math


def fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-2):
        return f"{value:.3g}"
    return f"{value:,.2f}"
