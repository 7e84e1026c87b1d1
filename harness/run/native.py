"""A job served by a native runtime (llama.cpp's tools, Genie's genie-t2t-run, ExecuTorch's
llama_main): one tool process per request.

A phone has no Python, so nothing of ours runs beside the tool: the target deploys the
files of the `Plan`, then runs each `Invocation` through its own `Execute` (a child process
here, `adb shell` on a phone) under `time -v`, which measures the process's peak RSS.
`events` turns each tool run into the events of `harness.run.protocol`: a `RemoteJob`
record naming runtime, binary version, model file and where each counter comes from;
per request, the outputs (`Request`, text and re-tokenized token ids, so agreement is
scored as for the reference engine) and the tool's counters (`Counters`). A tool that
fails ends the run with its last stderr lines; the requests before it stay stored.

Where the files come from is the scenario's settings for the runtime (`Job.runtime_settings`):
llama.cpp's host build unless a real phone is given `device_bin`; the user's QAIRT SDK and
Genie model folders; the user's llama_main and .pte files.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from harness.engine.gguf_file import MODELS, model_path, read_gguf
from harness.engine.tokenizer import Tokenizer
from harness.measure import timev
from harness.runtimes import build, executorch, genie, llamacpp
from harness.runtimes.models import gguf_file, lora_file
from harness.runtimes.report import ToolOutputError, ToolReport
from harness.runtimes.vocab import LlamaCppVocab
from harness.run import protocol
from harness.run.protocol import Job
from harness.spec.variant import Variant
from harness.targets.base import TargetError


class ToolFailed(TargetError):
    """The tool crashed, is missing, or printed what it never prints: a failure of the run,
    which the orchestrator stores as any target's."""


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
    adapter: str | None = None  # the LoRA adapter this request runs (task switching)


@dataclass(frozen=True)
class Plan:
    runtime: str
    tool: str  # the binary's name
    files: dict[str, Path]  # path in the deployment folder -> local file
    env: dict[str, str]  # values relative to the deployment folder, or absolute device paths
    model_file: str
    invocations: list[Invocation]
    read: Callable[[Outcome, str], ToolReport]  # a finished run and its prompt -> the tool's report
    version_argv: list[str] | None = None  # None: the version is in each run's output
    kl_runs: list[KlRun] = field(default_factory=list)  # after the requests: fidelity on the accuracy items


@dataclass(frozen=True)
class KlRun:
    """llama-perplexity --kl-divergence on one language x task cell of the accuracy items:
    the variant it is scored against saves its log-probs, then this variant is scored."""

    language: str
    task: str
    items: int
    argvs: list[list[str]]


@dataclass(frozen=True)
class Place:
    """Where the plan runs: on the host's build (this host, emulated phones) or a real
    phone's; the deployment folder's absolute path there; the device's SoC (Genie's HTP)."""

    host_build: bool
    root: str
    soc: str | None = None


@functools.cache
def _tokenizer(model: str) -> Tokenizer | LlamaCppVocab:
    if MODELS[model].family == "llama":
        return Tokenizer.from_gguf_metadata(read_gguf(model_path(model)).metadata)
    return LlamaCppVocab(model_path(model))


def plan(job: Job, place: Place) -> Plan:
    """What to deploy and run for `job` at `place`."""
    variant = Variant.from_dict(job.variant)
    planners = {"llamacpp": _llamacpp, "genie": _genie, "executorch": _executorch}
    if variant.runtime not in planners:
        raise ToolFailed(f"runtime {variant.runtime!r} is not a native runtime")
    try:
        return planners[variant.runtime](job, variant, place, job.runtime_settings or {})
    except genie.ConfigError as exc:
        raise ToolFailed(f"runtime 'genie': {exc}") from None
    except RuntimeError as exc:  # making a GGUF (llama-quantize, the LoRA converter) failed
        raise ToolFailed(str(exc)) from None


def _requests(job: Job) -> list[tuple[dict, bool, str]]:
    """(prompt, warm-up?, its text as the model sees it) per request, warm-ups first."""
    tokenizer = _tokenizer(job.model)
    warmups = [job.prompts[i % len(job.prompts)] for i in range(job.warmup)]
    return [(p, i < len(warmups), tokenizer.prompt_text(p)) for i, p in enumerate(warmups + job.prompts)]


def _llamacpp(job: Job, variant: Variant, place: Place, settings: dict) -> Plan:
    host_tools = build.build()
    if place.host_build:
        tools = host_tools
    elif settings.get("device_bin"):
        tools = Path(settings["device_bin"])
    else:
        raise ToolFailed("runtime 'llamacpp' on a phone needs the scenario's llamacpp.device_bin, "
                         "the folder of an arm64 build's binaries (README: real phones)")
    name = f"llama-{llamacpp.tool(variant)}"
    model = gguf_file(job.model, variant.precision, host_tools)
    loras = {adapter: lora_file(job.model, Path(job.adapters_dir) / adapter, host_tools) for adapter in variant.adapters}
    files = {f"llamacpp/bin/{name}": _exists(tools / name, variant), f"models/{model.name}": model}
    files |= {f"models/{lora.name}": lora for lora in loras.values()}
    libraries = [] if place.host_build else sorted((tools.parent / "lib").glob("*.so"))
    files |= {f"llamacpp/lib/{library.name}": library for library in libraries}
    tokenizer = _tokenizer(job.model)
    requests = _requests(job)
    context = max(len(tokenizer.encode(text)) for _, _, text in requests) + job.max_new_tokens
    threads = int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS") else None
    invocations = []
    for (prompt, warmup, text), adapter in itertools.product(requests, variant.adapters or (None,)):
        lora = f"models/{loras[adapter].name}" if adapter else None
        argv = llamacpp.command(variant, f"models/{model.name}", text, len(tokenizer.encode(text)),
                                job.max_new_tokens, context, threads, lora)
        invocations.append(Invocation(prompt["id"], warmup, text, [f"llamacpp/bin/{argv[0]}", *argv[1:]], adapter))
    end_token = tokenizer.token_text(tokenizer.eos_id)
    # the tools that echo the prompt print its tokens, BOS too where the model adds one (Gemma's "<bos>")
    shown = tokenizer.token_text(tokenizer.bos_id) if tokenizer.adds_bos else ""
    kl_files, kl_runs = _kl_runs(job, variant, model, host_tools, tools, threads)
    return Plan("llamacpp", name, files | kl_files, {"LD_LIBRARY_PATH": "llamacpp/lib"} if libraries else {},
                model.name, invocations,
                lambda out, prompt: llamacpp.parse(name.removeprefix("llama-"), out.stdout, out.stderr, shown + prompt,
                                                   end_token),
                [f"llamacpp/bin/{name}", "--version"], kl_runs)


def _kl_runs(job: Job, variant: Variant, model: Path, host_tools: Path, tools: Path,
             threads: int | None) -> tuple[dict[str, Path], list[KlRun]]:
    """The accuracy items' fidelity, llama-perplexity's way: per language x task, the text of the
    cell's items (prompt and reference) scored in chunks of KL_CONTEXT tokens. One log-probs file
    is reused cell after cell (a cell's is ~0.5 MB per scored position with Gemma's vocabulary)."""
    items = [p for p in job.prompts if p.get("language") and isinstance(p.get("reference"), str)]
    if job.against is None or not items or variant.adapters:
        return {}, []
    base = gguf_file(job.model, job.against["precision"], host_tools)
    files = {"llamacpp/bin/llama-perplexity": _exists(tools / "llama-perplexity", variant), f"models/{base.name}": base}
    tokenizer, runs = _tokenizer(job.model), []
    cells: dict[tuple[str, str], list[dict]] = {}
    for item in items:
        cells.setdefault((item["language"], item["kind"]), []).append(item)
    for (language, task), cell in cells.items():
        text = "\n\n".join(f"{tokenizer.prompt_text(p)} {p['reference']}" for p in cell)
        if len(tokenizer.encode(text)) < llamacpp.KL_MIN_TOKENS:
            continue
        relative = f"kl/{language}-{task}.txt"
        files[relative] = _written(text, ".txt")
        argvs = llamacpp.perplexity_commands(f"models/{base.name}", f"models/{model.name}", relative, "kl/base.kld",
                                             threads)
        runs.append(KlRun(language, task, len(cell), [[f"llamacpp/bin/{a[0]}", *a[1:]] for a in argvs]))
    return files, runs


def _genie(job: Job, variant: Variant, place: Place, settings: dict) -> Plan:
    """The QAIRT SDK's genie-t2t-run, its libraries for Android and the device's HTP, and the
    user's model folder for this precision (an AI Hub Genie bundle: genie_config.json,
    tokenizer.json, context binaries), with a dialog config generated for the variant."""
    sdk, models = _setting(settings, "sdk", "genie"), settings.get("models") or {}
    folder = Path(_setting(models, variant.precision, "genie", f"genie.models.{variant.precision}"))
    htp = genie.hexagon_arch(place.soc)
    files = {"genie/bin/genie-t2t-run": _exists(Path(sdk) / "bin/aarch64-android/genie-t2t-run", variant)}
    files |= _tree(Path(sdk) / "lib/aarch64-android", "genie/lib", "*.so")
    files |= _tree(Path(sdk) / f"lib/hexagon-{htp}/unsigned", f"genie/{htp}", "*")
    files |= _tree(folder, f"genie/models/{variant.precision}", "*", skip={"genie_config.json"})
    models_on_device = f"{place.root}/genie/models/{variant.precision}"
    config = genie.dialog_config(json.loads(_exists(folder / "genie_config.json", variant).read_text()), variant,
                                 models_on_device)
    files[f"genie/{variant.key}.json"] = _written(config)
    invocations = [Invocation(p["id"], warmup, text, genie.command(f"genie/{variant.key}.json", text, adapter), adapter)
                   for (p, warmup, text), adapter in itertools.product(_requests(job), variant.adapters or (None,))]
    env = {"LD_LIBRARY_PATH": f"{place.root}/genie/lib", "ADSP_LIBRARY_PATH": f"{place.root}/genie/{htp}"}
    return Plan("genie", "genie-t2t-run", files, env, folder.name, invocations,
                lambda out, prompt: genie.parse(out.stdout, out.stderr))


def _executorch(job: Job, variant: Variant, place: Place, settings: dict) -> Plan:
    """The user's llama_main (an Android build) with the .pte and tokenizer for this precision."""
    runner = _exists(Path(_setting(settings, "llama_main", "executorch")), variant)
    model = _setting(settings.get("models") or {}, variant.precision, "executorch",
                     f"executorch.models.{variant.precision}")
    pte, tokenizer = _exists(Path(model["pte"]), variant), _exists(Path(model["tokenizer"]), variant)
    files = {"executorch/llama_main": runner, f"executorch/{pte.name}": pte, f"executorch/{tokenizer.name}": tokenizer}
    invocations = [Invocation(p["id"], warmup, text,
                              executorch.command(f"executorch/{pte.name}", f"executorch/{tokenizer.name}", text,
                                                 job.max_new_tokens))
                   for p, warmup, text in _requests(job)]
    end_token = _tokenizer(job.model).token_text(_tokenizer(job.model).eos_id)
    return Plan("executorch", "llama_main", files, {}, pte.name, invocations,
                lambda out, prompt: executorch.parse(out.stdout, out.stderr, prompt, end_token))


def _setting(settings: dict, key: str, runtime: str, name: str | None = None):
    if not settings.get(key):
        raise ToolFailed(f"runtime {runtime!r} needs the scenario's {name or f'{runtime}.{key}'} (README: real phones)")
    return settings[key]


def _exists(path: Path, variant: Variant) -> Path:
    if not path.is_file():
        raise ToolFailed(f"no {path.name} in {path.parent} (variant {variant.key} runs it)")
    return path


def _tree(folder: Path, under: str, pattern: str, skip: frozenset[str] | set[str] = frozenset()) -> dict[str, Path]:
    return {f"{under}/{file.relative_to(folder).as_posix()}": file for file in sorted(folder.rglob(pattern))
            if file.is_file() and file.name not in skip}


def _written(document: dict | str, suffix: str = ".json") -> Path:
    """A generated file, kept where the deployment's hash cache can read it (named by its
    content, so runs writing different ones at once do not meet)."""
    text = document if isinstance(document, str) else json.dumps(document, indent=1)
    path = Path(tempfile.gettempdir()) / "hil-harness-generated" / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def events(job: Job, plan: Plan, execute: Execute, deadline: float) -> Iterator[protocol.Event]:
    """Run every invocation of the plan; the events of the protocol, as each tool run ends."""
    tokenizer = _tokenizer(job.model)
    version = _version(execute(plan.version_argv, plan.env, _left(deadline))) if plan.version_argv else None
    for number, invocation in enumerate(plan.invocations):
        outcome = execute(invocation.argv, plan.env, _left(deadline))
        if outcome.code != 0:
            tail = "\n".join(outcome.stderr.strip().splitlines()[-5:]) or "(stderr empty)"
            raise ToolFailed(f"{plan.tool} exited with code {outcome.code}; its last stderr lines:\n{tail}")
        try:
            report = plan.read(outcome, invocation.prompt)
        except ToolOutputError as exc:
            raise ToolFailed(str(exc)) from None
        if number == 0:
            sources = {**report.sources, "tool_peak_rss_bytes": "the target: ru_maxrss of the tool process (time -v)"}
            yield protocol.RemoteJob({"kind": "native", "runtime": plan.runtime, "tool": plan.tool,
                                      "version": version or report.version, "model_file": plan.model_file,
                                      "counter_sources": sources})
        for text in report.texts:
            # llama-completion says " [end of text]"; the other tools stop short of the maximum only
            # there. Lookahead and lookup may overshoot the maximum: cut to it, as the engine stops.
            ids = tokenizer.encode(text)
            ended = report.fields.get("end of text") == 1.0 or len(ids) < job.max_new_tokens
            # lookahead and lookup stop past the limit ("decoded N tokens", N > -n): their text loses
            # those last tokens too, so task scores see what greedy's limit gives
            over = int(report.fields.get("decoded tokens", 0)) - job.max_new_tokens
            if plan.tool in ("llama-lookahead", "llama-lookup") and over > 0:
                text = tokenizer.decode(ids[:len(ids) - over])
            yield protocol.Request(
                prompt_id=invocation.prompt_id, warmup=invocation.warmup, adapter=invocation.adapter,
                prompt_tokens=int(report.fields.get("prompt eval tokens", 0)),
                token_ids=text_tokens(job.model, text, job.max_new_tokens, ended), text=text,
                token_times_s=[], e2e_s=None)
        values = dict(report.counters)
        if outcome.max_rss_bytes is not None:
            values["tool_peak_rss_bytes"] = float(outcome.max_rss_bytes)
        yield protocol.Counters(invocation.prompt_id, values, invocation.adapter, invocation.warmup)
    for run in plan.kl_runs:
        yield _kl_divergence(job, run, plan, execute, deadline)


def _kl_divergence(job: Job, run: KlRun, plan: Plan, execute: Execute, deadline: float) -> protocol.RemoteJob:
    """One cell's two llama-perplexity runs -> a record of its summary (harness.analysis.grid reads it)."""
    for argv in run.argvs:
        outcome = execute(argv, plan.env, _left(deadline))
        if outcome.code != 0:
            tail = "\n".join(outcome.stderr.strip().splitlines()[-5:]) or "(stderr empty)"
            raise ToolFailed(f"llama-perplexity exited with code {outcome.code}; its last stderr lines:\n{tail}")
    try:
        values = llamacpp.parse_kl_divergence(outcome.stdout + outcome.stderr)
    except ToolOutputError as exc:
        raise ToolFailed(str(exc)) from None
    return protocol.RemoteJob({"kind": "kl_divergence", "tool": "llama-perplexity", "language": run.language,
                               "task": run.task, "items": run.items, "against": Variant.from_dict(job.against).key,
                               **values})


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
