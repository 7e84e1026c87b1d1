"""Prompt files: JSON lines under fixtures/, one prompt per line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.errors import HarnessError


class Prompt(BaseModel):
    """One request of a workload.

    `template: chat` wraps the text in the model's chat template (instruct prompts);
    `raw` sends it as is. `reference`, when given, is the accepted answer (or a list of
    accepted answers): scored by exact_match, or by the `scores` named (task scores of the
    accuracy suite, harness/spec/suite.py), whose items also carry their `language`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    kind: str = "open"
    template: Literal["chat", "raw"] = "chat"
    reference: str | list[str] | None = None
    language: str | None = None
    scores: tuple[str, ...] = ()


def load_prompts(path: Path) -> list[Prompt]:
    """Read and validate a prompts file; errors name the file, line and field."""
    if not path.is_file():
        raise HarnessError(f"{path}: prompts file not found")
    prompts: list[Prompt] = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            prompts.append(Prompt.model_validate(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise HarnessError(f"{where}: not valid JSON: {exc.msg}") from None
        except ValidationError as exc:
            raise HarnessError(f"{where}: {describe_validation_error(exc)}") from None
    if not prompts:
        raise HarnessError(f"{path}: no prompts in file")
    ids = [p.id for p in prompts]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise HarnessError(f"{path}: id: duplicate prompt ids {', '.join(duplicates)}")
    return prompts


def read_text(path: Path) -> str:
    """A file's UTF-8 text; HarnessError naming the file if it cannot be read or is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise HarnessError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise HarnessError(f"{path}: cannot read: {exc.strerror or exc}") from None


def describe_validation_error(exc: ValidationError) -> str:
    """The first pydantic error as 'field.path: message (got value)' on one line."""
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"]
    if error["type"] not in ("missing", "model_type"):
        message += f" (got {error['input']!r})"
    more = len(exc.errors()) - 1
    if more:
        message += f"; and {more} more error{'s' if more > 1 else ''}"
    return f"{field}: {message}"
