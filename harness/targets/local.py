"""The local target: the runner as a child process of the harness, on this host."""

from __future__ import annotations

import json
import os
import platform
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class CpuTimes:
    """Host-wide CPU seconds since boot, from /proc/stat's first line."""

    busy_s: float  # user + nice + system + irq + softirq + steal
    steal_s: float  # taken by the hypervisor for other guests

    @staticmethod
    def read() -> CpuTimes:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (
            int(v) / _TICKS for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
        return CpuTimes(user + nice + system + irq + softirq + steal, steal)


_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """utime + stime of a live process, from /proc/<pid>/stat (fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def host_state(since: CpuTimes | None = None, runner_pid: int | None = None) -> dict:
    """What the host was doing around a runner process, for the report's environment.

    With `since` (read before the runner started) and the runner's pid, it also says how many
    CPU seconds other processes used meanwhile, and how many the hypervisor stole: the
    numbers that tell a quiet repetition from one that shared the machine.
    """
    state: dict = {
        "time_s": time.time(),
        "load_1m": float(Path("/proc/loadavg").read_text().split()[0]),
        "cpu_mhz": {f"cpu{i}": round(mhz) for i, mhz in enumerate(cpu_mhz())},
        "temperatures_c": _temperatures(),
    }
    if since is not None and runner_pid is not None:
        now = CpuTimes.read()
        state["other_cpu_s"] = round(max(0.0, now.busy_s - since.busy_s - process_cpu_s(runner_pid)), 2)
        state["steal_s"] = round(now.steal_s - since.steal_s, 2)
    return state


def cpu_mhz() -> list[float]:
    """Each host CPU's current clock, from /proc/cpuinfo."""
    return [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("cpu MHz")]


def _temperatures() -> dict[str, float]:
    """Thermal zones the kernel exposes (none on most VMs), by type, in degrees C."""
    temperatures = {}
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*")):
        try:
            temperatures[(zone / "type").read_text().strip() or zone.name] = int((zone / "temp").read_text()) / 1000
        except (OSError, ValueError):
            continue
    return temperatures


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
            yield {"event": "device", "phase": "before", "state": host_state()}
            with open(Path(tmp) / "stderr.txt", "w+") as stderr:
                since = CpuTimes.read()
                process = subprocess.Popen(
                    [sys.executable, "-m", "harness.runner", str(job_path)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                )
                try:
                    yield from _events(process, stderr, time.monotonic() + timeout_s, timeout_s, since)
                finally:
                    if process.poll() is None:
                        process.kill()
                    process.wait()


def _events(process: subprocess.Popen, stderr, deadline: float, timeout_s: float,
            since: CpuTimes) -> Iterator[dict]:
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
            yield {"event": "device", "phase": "after", "state": host_state(since, process.pid)}
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
