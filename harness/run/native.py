"""A job served by a native runtime (llama.cpp's tools): one tool process per request.

A phone has no Python, so nothing of ours runs beside the tool: the target deploys the
files of the `Plan` (binaries under `llamacpp/`, the GGUF under `models/`), then runs each
`Invocation` through its own `Execute` (a child process here, `adb shell` on a phone),
which measures the process's peak RSS. `events` turns each tool run into the events of
`harness.run.protocol`: a `RemoteJob` record naming runtime, binary version, model file
and where each counter comes from; per request, the outputs (`Request`, text and
re-tokenized token ids, so agreement is scored as for the reference engine) and the
tool's counters (`Counters`). A tool that fails ends the run with its last stderr lines;
the requests before it stay stored.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from harness.engine.gguf_file import model_path, read_gguf
from harness.engine.tokenizer import Tokenizer
from harness.measure import timev
from harness.runtimes import build, llamacpp
from harness.runtimes.models import gguf_file
from harness.runtimes.report import ToolOutputError
from harness.run import protocol
from harness.run.protocol import Job
from harness.spec.variant import Variant

TOOLS_FOLDER = "llamacpp"  # in the deployment folder: bin/ (and lib/ for a shared-library build)


class ToolFailed(Exception):
    """The tool crashed or printed what it never prints; the target stores it as the run's failure."""


@dataclass(frozen=True)
class Outcome:
    """What one tool process did: exit code, its two streams, and what `time -v` measured of it
    (harness/measure/timev.py): its peak RSS and its own wall time, when there."""

    code: int
    stdout: str
    stderr: str
    max_rss_bytes: int | None = None
    real_s: float | None = None

    @classmethod
    def timed(cls, code: int, stdout: str, stderr_with_report: str) -> Outcome:
        stderr, report = timev.split(stderr_with_report)
        rss = report.get("Max RSS (KiB)")
        return cls(code, stdout, stderr, None if rss is None else int(rss) * 1024, report.get("Real time (s)"))


class Execute(Protocol):
    def __call__(self, argv: list[str], env: dict[str, str], timeout_s: float) -> Outcome:
        """Run argv (paths relative to the deployment folder) there with env added; TimeoutError
        once timeout_s has passed (the process killed)."""


@dataclass(frozen=True)
class Invocation:
    prompt_id: str
    warmup: bool
    prompt: str  # as the tool is given it (in the chat template unless raw)
    argv: list[str]


@dataclass(frozen=True)
class Plan:
    tool: str  # llamacpp.TOOLS
    files: dict[str, Path]  # path in the deployment folder -> local file
    env: dict[str, str]
    version_argv: list[str]
    model_file: str
    invocations: list[Invocation] = field(default_factory=list)


@functools.cache
def _tokenizer(model: str) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(read_gguf(model_path(model)).metadata)


def plan(job: Job, tools_dir: Path | None = None) -> Plan:
    """What to deploy and run for `job`: the tools in `tools_dir` (a phone's build), else the
    host build (`harness.runtimes.build`, for this host and the emulated phones)."""
    variant = Variant.from_dict(job.variant)
    host_tools = build.build()
    tools = tools_dir or host_tools
    name = llamacpp.tool(variant)
    if not (tools / f"llama-{name}").is_file():
        raise ToolFailed(f"no llama-{name} in {tools} (variant {variant.key} runs it)")
    model = gguf_file(job.model, variant.precision, host_tools)
    files = {f"{TOOLS_FOLDER}/bin/llama-{name}": tools / f"llama-{name}", f"models/{model.name}": model}
    libraries = sorted((tools.parent / "lib").glob("*.so")) if tools_dir else []
    files |= {f"{TOOLS_FOLDER}/lib/{library.name}": library for library in libraries}
    env = {"LD_LIBRARY_PATH": f"{TOOLS_FOLDER}/lib"} if libraries else {}
    tokenizer = _tokenizer(job.model)
    texts = {p["id"]: tokenizer.prompt_text(p) for p in job.prompts}
    longest = max(len(tokenizer.encode(text)) for text in texts.values())
    threads = int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS") else None
    warmups = [job.prompts[i % len(job.prompts)] for i in range(job.warmup)]
    invocations = []
    for index, prompt in enumerate(warmups + job.prompts):
        text = texts[prompt["id"]]
        argv = llamacpp.command(variant, f"models/{model.name}", text, len(tokenizer.encode(text)),
                                job.max_new_tokens, longest + job.max_new_tokens, threads)
        argv[0] = f"{TOOLS_FOLDER}/bin/{argv[0]}"
        invocations.append(Invocation(prompt["id"], index < len(warmups), text, argv))
    return Plan(name, files, env, [f"{TOOLS_FOLDER}/bin/llama-{name}", "--version"], model.name, invocations)


def events(job: Job, plan: Plan, execute: Execute, deadline: float) -> Iterator[protocol.Event]:
    """Run every invocation of the plan; the events of the protocol, as each tool run ends."""
    tokenizer = _tokenizer(job.model)
    version = _version(execute(plan.version_argv, plan.env, _left(deadline)))
    record = {"kind": "native", "runtime": "llamacpp", "tool": f"llama-{plan.tool}", "version": version,
              "model_file": plan.model_file}
    for number, invocation in enumerate(plan.invocations):
        outcome = execute(invocation.argv, plan.env, _left(deadline))
        if outcome.code != 0:
            tail = "\n".join(outcome.stderr.strip().splitlines()[-5:]) or "(stderr empty)"
            raise ToolFailed(f"llama-{plan.tool} exited with code {outcome.code}; its last stderr lines:\n{tail}")
        try:
            report = llamacpp.parse(plan.tool, outcome.stdout, outcome.stderr, invocation.prompt,
                                    tokenizer.backend.id_to_token(tokenizer.eos_id))
        except ToolOutputError as exc:
            raise ToolFailed(str(exc)) from None
        if number == 0:
            sources = {**report.sources, "tool_peak_rss_bytes": "the target: wait4 ru_maxrss of the tool process"}
            yield protocol.RemoteJob({**record, "counter_sources": sources})
        for text in report.texts:
            # llama-completion says " [end of text]"; the other tools stop short of the maximum only
            # there. Lookahead and lookup may overshoot the maximum: cut to it, as the engine stops.
            ended = report.fields.get("end of text") == 1.0 or len(tokenizer.encode(text)) < job.max_new_tokens
            yield protocol.Request(
                prompt_id=invocation.prompt_id, warmup=invocation.warmup,
                prompt_tokens=int(report.fields.get("prompt eval tokens", 0)),
                token_ids=text_tokens(job.model, text, job.max_new_tokens, ended), text=text,
                token_times_s=[], e2e_s=None)
        values = dict(report.counters)
        if outcome.max_rss_bytes is not None:
            values["tool_peak_rss_bytes"] = float(outcome.max_rss_bytes)
        yield protocol.Counters(invocation.prompt_id, values, warmup=invocation.warmup)


def text_tokens(model: str, text: str, limit: int, ended: bool) -> list[int]:
    """An output's token ids from its text: re-tokenized, cut to `limit`, and the
    end-of-sequence token appended when generation `ended` on one (as the reference engine
    keeps it; the tools print none)."""
    tokenizer = _tokenizer(model)
    return tokenizer.encode(text)[:limit] + ([tokenizer.eos_id] if ended else [])


def eos_id(model: str) -> int:
    return _tokenizer(model).eos_id


def _version(outcome: Outcome) -> str | None:
    return llamacpp.version(outcome.stdout + outcome.stderr) if outcome.code == 0 else None


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left
