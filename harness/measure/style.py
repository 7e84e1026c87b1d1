"""How strongly a text shows an adapter's style: its marker words and phrases per 100 words.

An adapter folder that holds `style_markers.txt` (one lower-case marker a line; "!" counts
every exclamation mark) gets a `style_score` for its outputs; others get none.
"""

from __future__ import annotations

import re
from pathlib import Path

MARKERS_FILE = "style_markers.txt"


def load_markers(adapter_folder: Path) -> tuple[str, ...] | None:
    path = adapter_folder / MARKERS_FILE
    if not path.is_file():
        return None
    return tuple(line.strip().lower() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def word_count(text: str) -> int:
    return len(re.findall(r"[a-z0-9']+", text.lower()))


def style_score(text: str, markers: tuple[str, ...]) -> float:
    """Marker occurrences per 100 words (0 for an empty text)."""
    pattern = re.compile("|".join(re.escape(m) if m == "!" else rf"\b{re.escape(m)}\b" for m in markers))
    words = word_count(text)
    return 100 * len(pattern.findall(text.lower())) / words if words else 0.0
