"""The accuracy suite: languages x tasks, each task declared in one file, as lm-evaluation-harness does.

A suite folder (fixtures/accuracy/) holds:
- `suite.yaml`: the languages (code -> the name prompts call it by) and the tasks, in order;
- `tasks/<task>.yaml`: the prompt template (`doc_to_text`, Jinja, over an item's fields and
  `language_name`), `answer_cue` (what a base model's raw prompt ends with, where an instruct
  model gets its chat template instead) and `metric_list` (each score and its direction);
- `items/<language>.jsonl`: the items, `{id, language, task, input, reference[, question]}`.

Each item becomes one `Prompt` of the workload, its `kind` the task and its `scores` the
task's metrics; the teacher-forced fidelity counters are computed on its reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2.sandbox
import yaml
from pydantic import Field, ValidationError

from harness.errors import HarnessError
from harness.measure.metrics import METRICS
from harness.measure.scores import TASK_SCORES
from harness.spec.prompts import Prompt, describe_validation_error, read_text
from harness.spec.variant import Strict

_JINJA = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


class SuiteFile(Strict):
    languages: dict[str, str] = Field(min_length=1)  # code -> name
    tasks: list[str] = Field(min_length=1)


class MetricEntry(Strict):
    metric: str
    higher_is_better: bool


class TaskFile(Strict):
    task: str
    description: str = ""
    doc_to_text: str = Field(min_length=1)
    answer_cue: str = Field(min_length=1)
    metric_list: list[MetricEntry] = Field(min_length=1)


class Item(Strict):
    id: str = Field(min_length=1)
    language: str
    task: str
    input: str = Field(min_length=1)
    reference: str = Field(min_length=1)
    question: str | None = None


def suite_file(folder: Path) -> SuiteFile:
    return _model(SuiteFile, folder / "suite.yaml")


def load_suite(folder: Path, instruct: bool, languages: list[str] | None = None, tasks: list[str] | None = None,
               items_per_cell: int | None = None) -> list[Prompt]:
    """The suite's items as prompts, for an instruct model (chat template) or a base model (raw
    prompt ending with the task's answer cue); `languages`, `tasks`, `items_per_cell` select a
    slice (of the suite's own: the scenario checks that)."""
    suite = suite_file(folder)
    paths = {name: folder / "tasks" / f"{name}.yaml" for name in suite.tasks}
    task_files = {name: _task(path, name) for name, path in paths.items()}
    prompts = []
    for language in languages or list(suite.languages):
        items = _items(folder / "items" / f"{language}.jsonl", language, suite.tasks)
        for task in tasks or suite.tasks:
            cell = [item for item in items if item.task == task][:items_per_cell]
            prompts += [_prompt(item, task_files[task], suite.languages[language], instruct, paths[task])
                        for item in cell]
    return prompts


def _prompt(item: Item, task: TaskFile, language_name: str, instruct: bool, path: Path) -> Prompt:
    fields = {**item.model_dump(), "language_name": language_name}
    try:
        text = _JINJA.from_string(task.doc_to_text).render(fields)
        if not instruct:
            text += "\n\n" + _JINJA.from_string(task.answer_cue).render(fields)
    except jinja2.TemplateError as exc:
        raise HarnessError(f"{path}: doc_to_text: cannot render item {item.id!r}: {exc.message}; "
                           f"fields: {', '.join(fields)}") from None
    return Prompt(id=item.id, prompt=text, kind=item.task, template="chat" if instruct else "raw",
                  reference=item.reference, language=item.language,
                  scores=tuple(entry.metric for entry in task.metric_list))


def _task(path: Path, name: str) -> TaskFile:
    task = _model(TaskFile, path)
    if task.task != name:
        raise HarnessError(f"{path}: task: must be {name!r} (the file's name), got {task.task!r}")
    for number, entry in enumerate(task.metric_list):
        if entry.metric not in TASK_SCORES:
            raise HarnessError(f"{path}: metric_list.{number}.metric: {entry.metric!r} is not a task score; "
                               f"allowed: {', '.join(TASK_SCORES)}")
        metric = METRICS[entry.metric]
        if entry.higher_is_better != (metric.better == "higher"):
            raise HarnessError(f"{path}: metric_list.{number}.higher_is_better: {entry.metric} is better "
                               f"{metric.better} (harness/measure/metrics.yaml)")
    try:
        _JINJA.parse(task.doc_to_text), _JINJA.parse(task.answer_cue)
    except jinja2.TemplateSyntaxError as exc:
        raise HarnessError(f"{path}: doc_to_text: not a valid template: {exc.message}") from None
    return task


def _items(path: Path, language: str, tasks: list[str]) -> list[Item]:
    if not path.is_file():
        raise HarnessError(f"{path}: items file not found (suite.yaml lists language {language!r})")
    items = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = Item.model_validate(json.loads(line))
        except json.JSONDecodeError as exc:
            raise HarnessError(f"{path}:{number}: not valid JSON: {exc.msg}") from None
        except ValidationError as exc:
            raise HarnessError(f"{path}:{number}: {describe_validation_error(exc)}") from None
        if item.language != language or item.task not in tasks:
            raise HarnessError(f"{path}:{number}: language/task: must be {language!r} and one of "
                               f"{', '.join(tasks)}, got {item.language!r}/{item.task!r}")
        items.append(item)
    return items


def _model(kind: type[Strict], path: Path) -> Strict:
    if not path.is_file():
        raise HarnessError(f"{path}: file not found")
    try:
        return kind.model_validate(yaml.safe_load(read_text(path)))
    except yaml.YAMLError as exc:
        raise HarnessError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    except ValidationError as exc:
        raise HarnessError(f"{path}: {describe_validation_error(exc)}") from None
