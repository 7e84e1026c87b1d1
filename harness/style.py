"""How strongly a text shows each style: marker words and phrases per 100 words."""
import re

# style -> markers (lower case; "!" counts every exclamation mark)
MARKERS: dict[str, tuple[str, ...]] = {
    "formal": ("dear", "furthermore", "moreover", "kind regards", "sincerely", "yours faithfully",
               "i am writing", "please find", "accordingly", "respectfully", "regrettably", "i shall"),
    "polite": ("please", "thank you", "thanks", "i would be happy to", "i'd be happy to", "kindly",
               "i appreciate", "i really appreciate", "my pleasure", "grateful", "sorry", "would you mind"),
    "jovial": ("hey", "awesome", "haha", "woohoo", "yay", "wow", "super", "cool", "totally", "fun", "!"),
}
STYLES = tuple(MARKERS)
_PATTERNS = {
    style: re.compile("|".join(re.escape(m) if m == "!" else rf"\b{re.escape(m)}\b" for m in markers))
    for style, markers in MARKERS.items()
}


def word_count(text: str) -> int:
    return len(re.findall(r"[a-z0-9']+", text.lower()))


def style_scores(text: str) -> dict[str, float]:
    """style -> marker occurrences per 100 words (0 for an empty text)."""
    words, lowered = word_count(text), text.lower()
    return {style: 100 * len(p.findall(lowered)) / words if words else 0.0 for style, p in _PATTERNS.items()}
