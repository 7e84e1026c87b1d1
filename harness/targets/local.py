"""The local target: the runner as a child process of the harness, on this host."""

from __future__ import annotations

import json
import platform
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from harness.runner import Job
from harness.targets import TargetError, TargetInfo


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def peak_rss_bytes(pid: int) -> int:
    """VmHWM of a live process, from /proc/<pid>/status."""
    return _kb_field(Path(f"/proc/{pid}/status"), "VmHWM:")


def pss_bytes(pid: int) -> int:
    """Proportional set size of a live process, from /proc/<pid>/smaps_rollup."""
    return _kb_field(Path(f"/proc/{pid}/smaps_rollup"), "Pss:")


def _kb_field(path: Path, name: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(name):
            return int(line.split()[1]) * 1024  # reported in kB
    raise TargetError(f"no {name} in {path}")


class LocalTarget:
    def __init__(self) -> None:
        self.info = TargetInfo(
            kind="local",
            name="local",
            serial=socket.gethostname(),
            model=cpu_model(),
            soc=platform.machine(),
            emulated=False,
        )

    def run(self, job: Job, timeout_s: float) -> Iterator[dict]:
        with tempfile.TemporaryDirectory(prefix="harness-job-") as tmp:
            job_path = Path(tmp) / "job.json"
            job.dump(job_path)
            with open(Path(tmp) / "stderr.txt", "w+") as stderr:
                process = subprocess.Popen(
                    [sys.executable, "-m", "harness.runner", str(job_path)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                )
                try:
                    yield from _events(process, stderr, time.monotonic() + timeout_s, timeout_s)
                finally:
                    if process.poll() is None:
                        process.kill()
                    process.wait()


def _events(process: subprocess.Popen, stderr, deadline: float, timeout_s: float) -> Iterator[dict]:
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            process.kill()
            raise TargetError(f"runner timed out after {timeout_s:g} s") from None
        if line is None:
            process.wait()
            raise TargetError(f"runner exited with code {process.returncode}: {_tail(stderr)}")
        event = json.loads(line)
        if event["event"] == "error":
            raise TargetError(f"runner failed: {event['error']}")
        if event["event"] == "measured":
            yield {"event": "process", "peak_rss_bytes": peak_rss_bytes(process.pid), "pss_bytes": pss_bytes(process.pid)}
        elif event["event"] == "done":
            process.stdin.close()
            process.wait()
            return
        else:
            yield event


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _tail(stderr) -> str:
    stderr.seek(0)
    text = stderr.read().strip().splitlines()
    return text[-1] if text else "(no stderr)"
