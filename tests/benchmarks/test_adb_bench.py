"""Benchmarks of the adb path through the emulated devices (run with `make bench`, idle machine).

- a 100 MB push at >= 200 MB/s on loopback, with the harness's own sync client;
- harness overhead per adb run < 100 ms: a full `AdbTarget.run` (device state before and
  after, deployment check, job push, shell v2 start, memory read, exit) around a runner
  that does no work at all, so everything measured is the harness's (and the shell's).
"""

from __future__ import annotations

import os
from pathlib import Path


from harness.run.protocol import Job
from harness.targets.adb.runtimes import ReferenceRunner

SIZE = 100 * 1000 * 1000
IDLE_RUNNER = """#!/bin/sh
echo '{"event": "measured"}'
echo '{"event": "done"}'
cat > /dev/null
"""


class IdleRunner(ReferenceRunner):
    """A runner adapter whose runner only reports "measured" and "done"."""

    def __init__(self, script: Path) -> None:
        self.script = script

    def files(self, job: Job) -> dict[str, Path]:
        return {"idle.sh": self.script}

    def command(self, job_file: str) -> str:
        return "sh idle.sh"


def test_push_100_mb_at_200_mb_per_s(phone, benchmark, tmp_path) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(SIZE))
    benchmark.pedantic(phone.phone.push, args=(blob, "/data/local/tmp/blob.bin"), rounds=5, warmup_rounds=1)
    rate = SIZE / benchmark.stats.stats.median / 1e6
    print(f"\npush: {rate:.0f} MB/s (median of 5)")
    assert rate >= 200


def test_overhead_per_adb_run_under_100_ms(phone, benchmark, tmp_path) -> None:
    script = tmp_path / "idle.sh"
    script.write_text(IDLE_RUNNER)
    phone.runner = IdleRunner(script)
    job = Job("smollm2-135m-instruct", {"precision": "fp16", "runtime": "reference"}, [{"id": "a", "prompt": "hi"}], 2, 0)
    events = benchmark.pedantic(lambda: list(phone.run(job, timeout_s=30)), rounds=20, warmup_rounds=2)
    assert [e.name for e in events] == ["device", "process", "device"]
    median_ms = benchmark.stats.stats.median * 1e3
    print(f"\noverhead per adb run: {median_ms:.1f} ms (median of 20)")
    assert median_ms < 100
