"""Benchmarks of the llamacpp runtime (run with `make bench`, idle machine).

- the harness's overhead per native run < 100 ms: the wall time of a whole job on the
  target (plan, deployment, device state before and after, one tool process per request,
  parsing, events) less the tools' own wall time (`time -v`'s "Real time"), per process,
  on the local target and on an emulated phone through the adb path.
The reference engine against llama.cpp on the same GGUF, decode tokens/s ratio with its
interval, is a scenario with budgets: scenarios/runtimes-bench.yaml.
"""

from __future__ import annotations

import time

from harness.run import native
from harness.run.protocol import Job
from harness.spec.variant import Variant
from harness.targets.local import LocalTarget

PROMPTS = [{"id": f"p{i}", "prompt": f"Count to {i}:", "template": "raw"} for i in range(8)]
JOB = Job("smollm2-135m-instruct", Variant(precision="int4", runtime="llamacpp").as_dict(), PROMPTS, 4, 0)


def _overhead_ms(target, monkeypatch, module, name: str) -> float:
    """(job wall time - the tools' own wall time) / tool processes, for one job on `target`."""
    outcomes: list[native.Outcome] = []
    run = getattr(module, name)

    def timed(*args):
        outcomes.append(run(*args))
        return outcomes[-1]

    monkeypatch.setattr(module, name, timed)
    list(target.run(JOB, timeout_s=300))  # deploys, makes the GGUF, reads the tokenizer: not measured
    outcomes.clear()
    start = time.perf_counter()
    events = list(target.run(JOB, timeout_s=300))
    wall = time.perf_counter() - start
    assert sum(e.name == "sample" for e in events) == len(PROMPTS)
    return (wall - sum(o.real_s for o in outcomes)) / len(outcomes) * 1e3


def test_overhead_per_local_native_run_under_100_ms(monkeypatch, record_property) -> None:
    import harness.targets.local as local

    overhead = _overhead_ms(LocalTarget(), monkeypatch, local, "_execute")
    print(f"\noverhead per native run, local: {overhead:.1f} ms")
    record_property("local_overhead_ms", round(overhead, 1))
    assert overhead < 100


def test_overhead_per_adb_native_run_under_100_ms(phone, monkeypatch, record_property) -> None:
    overhead = _overhead_ms(phone, monkeypatch, phone, "_execute")
    print(f"\noverhead per native run, emulated phone over adb: {overhead:.1f} ms")
    record_property("adb_overhead_ms", round(overhead, 1))
    assert overhead < 100
