"""The one reader of host and process state: psutil where it has the number, /proc where not.

Used by the local target (the runner's memory, the host around each runner process), the
environment of a run, and the emulated devices (which report this host's numbers as
theirs). psutil has no peak resident set, so VmHWM is read in `peak_rss_bytes`;
`proc_kb_fields` parses the same `/proc` text when it comes from a phone over adb.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

import psutil


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def proc_kb_fields(text: str) -> dict[str, int]:
    """`Name:  123 kB` lines of /proc/<pid>/status or smaps_rollup -> {"Name": bytes}."""
    values = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[2] == "kB" and fields[0].endswith(":"):
            values[fields[0][:-1]] = int(fields[1]) * 1024
    return values


def peak_rss_bytes(pid: int | str = "self") -> int:
    """VmHWM of a live process: the most it has been resident, which psutil does not give."""
    return proc_kb_fields(Path(f"/proc/{pid}/status").read_text())["VmHWM"]


def reset_peak_rss(pid: int | str = "self") -> None:
    """Set a live process's VmHWM back to its current resident set (`clear_refs` 5, Linux 4.0+),
    so the next reading is the peak of what it did since, not of loading."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def rss_bytes(pid: int | None = None) -> int:
    return psutil.Process(pid).memory_info().rss


def pss_bytes(pid: int) -> int:
    """Proportional set size of a live process (smaps_rollup, through psutil)."""
    return psutil.Process(pid).memory_full_info().pss


def process_tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process, its finished children (reaped) and its
    live descendants: a runner's and the compile workers it started."""
    process = psutil.Process(pid)
    times = process.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in process.children(recursive=True):
        try:
            child_times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += child_times.user + child_times.system
    return total


@dataclass(frozen=True)
class CpuTimes:
    """Host-wide CPU seconds since boot, and this process's own (the harness's)."""

    busy_s: float  # user + nice + system + irq + softirq + steal
    steal_s: float  # taken by the hypervisor for other guests
    own_s: float  # this process's user + system, all its threads
    at_s: float  # time.monotonic() when read

    @staticmethod
    def read() -> CpuTimes:
        t, own = psutil.cpu_times(), psutil.Process().cpu_times()
        return CpuTimes(t.user + t.nice + t.system + t.irq + t.softirq + t.steal, t.steal, own.user + own.system,
                        time.monotonic())


CPUFREQ = Path("/sys/devices/system/cpu/cpufreq")


def has_cpufreq() -> bool:
    """Whether the kernel reports current clocks (cpufreq). Without it, as on most VMs,
    psutil falls back to /proc/cpuinfo's "cpu MHz": a nominal figure, not a measurement."""
    return any(CPUFREQ.glob("policy*/scaling_cur_freq"))


def cpu_mhz() -> list[float]:
    """Each host CPU's clock: current from cpufreq, else nominal (see `has_cpufreq`)."""
    return [freq.current for freq in psutil.cpu_freq(percpu=True)]


def temperatures() -> dict[str, float]:
    """The temperatures the kernel exposes (none on most VMs), by sensor, in degrees C."""
    return {f"{chip}/{entry.label}" if entry.label else chip: entry.current
            for chip, entries in sorted(psutil.sensors_temperatures().items()) for entry in entries}


def host_state(since: CpuTimes | None = None, runner_pid: int | None = None) -> dict:
    """What the host was doing around a runner process, for the report's environment.

    With `since` (read before the runner started) and the runner's pid, it also says how many
    CPU seconds other processes used meanwhile (not the runner and its children, not this
    harness process), how many the hypervisor stole, and over how long a window
    (`window_s`): the numbers that tell a quiet repetition from one that shared the machine.
    """
    state: dict = {
        "time_s": time.time(),
        "load_1m": psutil.getloadavg()[0],
        "cpu_mhz": {f"cpu{i}": round(mhz) for i, mhz in enumerate(cpu_mhz())},
        "cpu_mhz_source": "cpufreq" if has_cpufreq() else "nominal",
        "temperatures_c": temperatures(),
    }
    if since is not None and runner_pid is not None:
        now = CpuTimes.read()
        ours = process_tree_cpu_s(runner_pid) + now.own_s - since.own_s
        state["other_cpu_s"] = round(max(0.0, now.busy_s - since.busy_s - ours), 2)
        state["steal_s"] = round(now.steal_s - since.steal_s, 2)
        state["window_s"] = round(now.at_s - since.at_s, 3)
    return state
