"""Task scores of one output against its reference: each a library call on the real text.

- `chrf`: sacrebleu's sentence chrF (character 6-grams, word order 0, beta 2), 0-100: it
  needs no tokenizer, so it means the same in all nine languages;
- `qa_f1`: SQuAD-style token F1 after normalizing (lower case, no punctuation); scripts
  written without spaces (Chinese, Japanese) are compared character by character;
- `exact_match`: the normalized output equals the reference (harness.measure.counters);
- `language_match`: py3langid (its model ships in the wheel) names the output's language
  as the item's.
"""

from __future__ import annotations

import collections
import re
import unicodedata

import sacrebleu

TASK_SCORES = ("chrf", "qa_f1", "exact_match", "language_match")  # what a suite task may list
_NO_SPACES = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff]")  # kana, CJK ideographs


def chrf(text: str, reference: str) -> float:
    return float(sacrebleu.sentence_chrf(text, [reference]).score)


def qa_f1(text: str, reference: str) -> float:
    predicted, gold = _tokens(text), _tokens(reference)
    common = sum((collections.Counter(predicted) & collections.Counter(gold)).values())
    if not predicted or not gold or common == 0:
        return float(predicted == gold)
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def language_match(text: str, language: str) -> float:
    if not text.strip():
        return 0.0
    import py3langid

    return float(py3langid.classify(text)[0] == language)


def _tokens(text: str) -> list[str]:
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text.lower())
    if _NO_SPACES.search(text):
        return [c for c in text if not c.isspace()]
    return text.split()
