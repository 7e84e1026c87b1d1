"""The runner: one process that loads one variant and runs one workload.

    python -m harness.run.runner JOB.json

Targets start it (as a child process locally, over adb on a phone), so memory is
measured per variant and a crash cannot take the harness down. It writes the events of
`harness.run.protocol` to stdout, one JSON line each. Fidelity work runs after
`Measured`, untimed, so it touches neither latency nor memory counters.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from harness.run import protocol
from harness.run.protocol import Job

_EVENTS = sys.stdout  # the event stream; anything else printed goes to stderr


def emit(event: protocol.Event) -> None:
    _EVENTS.write(protocol.line(event))
    _EVENTS.flush()


def run(job: Job) -> None:
    import torch

    from harness.engine import load_engine
    from harness.run.serving import VariantServer

    start = time.perf_counter()
    engine = load_engine(job.model, job.variant["precision"], graph=job.variant["graph"])
    # before the server compiles the decode step (if the variant does), so the graph includes the hook
    slowdown = _slow_down(engine.model, job.delay_ms_per_token) if job.delay_ms_per_token else None
    if job.perturb_language:
        _perturb(engine, job.prompts, job.perturb_language)
    # The KV cache holds the longest request of this workload, as a deployment sized for it would,
    # or the longest accuracy item's prompt and reference (teacher-forced after the timed work).
    longest = max(len(engine.tokenizer.encode(engine.tokenizer.prompt_text(p)))
                  + max(job.max_new_tokens, len(engine.tokenizer.encode(_reference(p)))) for p in job.prompts)
    adapters_dir = Path(job.adapters_dir) if job.adapters_dir else None
    forecast = Path(job.forecast_file) if job.forecast_file else None
    server = VariantServer(engine, job.variant, adapters_dir, longest, forecast)
    load_ms = (time.perf_counter() - start) * 1e3
    emit(protocol.Loaded(
        load_ms=load_ms,
        weights_bytes=engine.weights_bytes,
        kv_cache_bytes=engine.kv_cache_bytes(),
        adapter_bytes=server.adapter_bytes,
        engine={"name": "reference", "torch": torch.__version__, "threads": torch.get_num_threads(),
                "test_delay_ms_per_token": job.delay_ms_per_token},
    ))
    warmups = [job.prompts[i % len(job.prompts)] for i in range(job.warmup)]
    outputs = {}
    for index, prompt in enumerate(warmups + job.prompts):
        outputs[prompt["id"]] = _request(server, prompt, job.max_new_tokens, warmup=index < len(warmups))
    emit(protocol.Measured())
    if slowdown is not None:
        slowdown.remove()  # fidelity scoring is untimed
    server.restore_base()  # fidelity is of the variant's weights, without adapters
    _fidelity(engine, job, outputs)
    _reference_fidelity(server, job, {p: ids for p, (ids, _) in outputs.items()})
    emit(protocol.Done())


def _slow_down(model, delay_ms: float):
    """Sleep after every forward call of the model: the decode steps (prefill runs `hidden`)."""
    return model.register_forward_hook(lambda *_: time.sleep(delay_ms / 1e3))


def _fidelity(engine, job: Job, outputs: dict[str, tuple[list[int], list[int]]]) -> None:
    from harness.engine import fidelity

    for prompt_id, (prompt_ids, output_ids) in outputs.items():
        if job.emit_teacher:
            reference = fidelity.teacher(engine.model, prompt_ids, output_ids)
            emit(protocol.Teacher(prompt_id, reference.as_dict()))
        elif job.teachers and prompt_id in job.teachers:
            kld = fidelity.kl_divergence(engine.model, fidelity.Teacher(**job.teachers[prompt_id]))
            emit(protocol.Fidelity(prompt_id, kld))


def _reference_fidelity(server, job: Job, prompt_ids: dict[str, list[int]]) -> None:
    """Accuracy items: the baseline's teacher on each reference (per adapter, applied as the
    variant applies it), or this variant scored against it."""
    from harness.engine import fidelity

    tokenizer = server.engine.tokenizer
    for prompt in job.prompts:
        if not _reference(prompt):
            continue
        reference_ids = tokenizer.encode(_reference(prompt))
        for adapter in job.variant["adapters"] or [None]:
            key = f"{prompt['id']}/{adapter or ''}"
            with server.applied(adapter) as inputs:
                if job.emit_teacher:
                    teacher = fidelity.teacher(server.engine.model, prompt_ids[prompt["id"]], reference_ids, inputs)
                    emit(protocol.Teacher(prompt["id"], teacher.as_dict(), on="reference", adapter=adapter))
                elif job.reference_teachers and key in job.reference_teachers:
                    scored = fidelity.compare(server.engine.model, fidelity.Teacher(**job.reference_teachers[key]),
                                              inputs)
                    emit(protocol.ReferenceFidelity(prompt["id"], scored.kld, sum(scored.top1) / len(scored.top1),
                                                    scored.ppl_ratio, adapter))


def _reference(prompt: dict) -> str:
    """An accuracy item's reference text ('' for other prompts): teacher-forced after its prompt."""
    return prompt["reference"] if prompt.get("language") and isinstance(prompt.get("reference"), str) else ""


def _perturb(engine, prompts: list[dict], language: str) -> None:
    """The planted-degradation test knob: noise on the input embeddings of the tokens that the
    accuracy items of `language` use and no other language's items do (the tied output head is
    left alone), so the model reads those tokens worse and nothing else changes."""
    import torch

    tokenizer = engine.tokenizer
    used: dict[bool, set[int]] = {True: set(), False: set()}
    for prompt in prompts:
        if prompt.get("language"):  # its tokens as served and as teacher-forced
            ids = tokenizer.encode(tokenizer.prompt_text(prompt)) + tokenizer.encode(_reference(prompt))
            used[prompt["language"] == language].update(ids)
    rows = torch.tensor(sorted(used[True] - used[False]), dtype=torch.long)
    embeddings = engine.model.tok_embeddings
    scale = float(embeddings(rows).float().std())
    delta = torch.zeros(engine.model.config.vocab_size, engine.model.config.dim)
    delta[rows] = torch.randn(len(rows), delta.shape[1], generator=torch.Generator().manual_seed(0)) * scale
    embeddings.register_forward_hook(lambda _, inputs, output: output + delta[inputs[0]].to(output.dtype))


def _request(server, prompt: dict, max_new_tokens: int, warmup: bool) -> tuple[list[int], list[int]]:
    """Serve one prompt; one `Request` event per output (per adapter or stream)."""
    tokenizer = server.engine.tokenizer
    start = time.perf_counter()
    ids = tokenizer.encode(tokenizer.prompt_text(prompt))
    offset = time.perf_counter() - start  # serving's clock starts after tokenizing
    outputs = server.serve(ids, max_new_tokens)
    for output in outputs:
        decode_start = time.perf_counter()
        text = tokenizer.decode(output.generation.token_ids)
        emit(protocol.Request(
            prompt_id=prompt["id"],
            adapter=output.adapter,
            warmup=warmup,
            prompt_tokens=output.generation.prompt_tokens,
            token_ids=output.generation.token_ids,
            text=text,
            token_times_s=[offset + t for t in output.generation.token_times],
            e2e_s=offset + output.seconds + (time.perf_counter() - decode_start),
            stats=output.stats,
        ))
    return ids, outputs[0].generation.token_ids


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m harness.run.runner JOB.json", file=sys.stderr)
        return 2
    sys.stdout = sys.stderr  # keep stray prints out of the event stream
    try:
        run(Job.load(Path(args[0])))
    except Exception as exc:  # reported as data; the target stores it as a failed sample
        emit(protocol.Error(f"{type(exc).__name__}: {exc}"))
        return 1
    sys.stdin.read()  # hold still until the target has read our peak memory
    return 0


if __name__ == "__main__":
    sys.exit(main())
