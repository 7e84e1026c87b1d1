"""The host reader: what other processes used around a runner excludes the harness and the runner."""
import subprocess
import sys
import time

from harness.measure.host import CpuTimes, host_state

SPIN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass"  # CPU-bound for s seconds


def _spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def _other_cpu_s(harness_s: float, runner_child_s: float) -> float:
    """other_cpu_s over a 2.5 s window in which this process (the harness) spends `harness_s`
    of CPU and a child of the "runner" `runner_child_s`."""
    child = [sys.executable, "-c", SPIN.format(s=runner_child_s)]
    runner = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run({child!r}); sys.stdin.read()"],
                              stdin=subprocess.PIPE)
    try:
        since = CpuTimes.read()
        start = time.monotonic()
        _spin(harness_s)
        time.sleep(max(0.0, 2.5 - (time.monotonic() - start)))
        return host_state(since, runner.pid)["other_cpu_s"]
    finally:
        runner.communicate(b"")


def test_other_cpu_excludes_the_harness_and_the_runners_children() -> None:
    quiet = _other_cpu_s(0.0, 0.0)  # this machine's background over the window (a test worker, a hog...)
    busy = _other_cpu_s(1.0, 1.0)  # 2 s more CPU, all of it the harness's and the runner's
    assert busy < quiet + 0.8, (quiet, busy)  # counting either would add about 1 s
