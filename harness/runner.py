"""The runner: one process that loads one variant and runs one workload.

    python -m harness.runner JOB.json

Targets start it (as a child process locally, over adb on a phone), so memory is
measured per variant and a crash cannot take the harness down. It writes JSON lines to
stdout, one event each:

    {"event": "loaded", "load_ms", "weights_bytes", "kv_cache_bytes", "engine": {...}}
    {"event": "sample", "prompt_id", "warmup", "prompt_tokens", "token_ids", "text",
     "token_times_s", "e2e_s"}        # token_times_s: from request start, one per token
    {"event": "done"}
    {"event": "error", "error": "..."}

After "done" it waits for stdin to close before exiting, so the target can read the
process's peak RSS (VmHWM) while it is still alive. The job file is what `Job` holds.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Job:
    model: str
    variant: dict
    prompts: list[dict]  # Prompt fields: id, prompt, template, ...
    max_new_tokens: int
    warmup: int

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Job:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


_EVENTS = sys.stdout  # the event stream; anything else printed goes to stderr


def emit(event: str, **fields: object) -> None:
    _EVENTS.write(json.dumps({"event": event, **fields}) + "\n")
    _EVENTS.flush()


def run(job: Job) -> None:
    import torch

    from harness.engine import load_engine

    start = time.perf_counter()
    engine = load_engine(job.model, job.variant["precision"])
    # The KV cache holds the longest request of this workload, as a deployment sized for it would.
    longest = max(len(engine.tokenizer.encode(_text(engine, p))) for p in job.prompts)
    engine.reserve(longest + job.max_new_tokens)
    load_ms = (time.perf_counter() - start) * 1e3
    emit(
        "loaded",
        load_ms=load_ms,
        weights_bytes=engine.weights_bytes,
        kv_cache_bytes=engine.kv_cache_bytes(),
        engine={"name": "reference", "torch": torch.__version__, "threads": torch.get_num_threads()},
    )
    warmups = [job.prompts[i % len(job.prompts)] for i in range(job.warmup)]
    for index, prompt in enumerate(warmups + job.prompts):
        _request(engine, prompt, job.max_new_tokens, warmup=index < len(warmups))
    emit("done")


def _request(engine, prompt: dict, max_new_tokens: int, warmup: bool) -> None:
    start = time.perf_counter()
    ids = engine.tokenizer.encode(_text(engine, prompt))
    offset = time.perf_counter() - start  # generation's clock starts after tokenizing
    generation = engine.generate(ids, max_new_tokens)
    output = engine.tokenizer.decode(generation.token_ids)
    e2e = time.perf_counter() - start
    emit(
        "sample",
        prompt_id=prompt["id"],
        warmup=warmup,
        prompt_tokens=generation.prompt_tokens,
        token_ids=generation.token_ids,
        text=output,
        token_times_s=[offset + t for t in generation.token_times],
        e2e_s=e2e,
    )


def _text(engine, prompt: dict) -> str:
    """The prompt as the model sees it: in the chat template unless the prompt is raw."""
    if prompt.get("template", "chat") == "chat":
        return engine.tokenizer.chat_prompt(prompt["prompt"])
    return prompt["prompt"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m harness.runner JOB.json", file=sys.stderr)
        return 2
    sys.stdout = sys.stderr  # keep stray prints out of the event stream
    try:
        run(Job.load(Path(args[0])))
    except Exception as exc:  # reported as data; the target stores it as a failed sample
        emit("error", error=f"{type(exc).__name__}: {exc}")
        return 1
    sys.stdin.read()  # hold still until the target has read our peak memory
    return 0


if __name__ == "__main__":
    sys.exit(main())
