"""The local target: the runner as a child process of the harness, on this host; or, for a
native runtime, its host build's tools, one child process per request (`harness.run.native`)."""

from __future__ import annotations

import os
import platform
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from harness.measure import timev
from harness.measure.host import CpuTimes, cpu_model, host_state, peak_rss_bytes, pss_bytes, reset_peak_rss
from harness.run import native, protocol
from harness.run.protocol import Job
from harness.targets.base import TargetError, TargetInfo


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

    def run(self, job: Job, timeout_s: float) -> Iterator[protocol.Event]:
        if job.variant["runtime"] != "reference":
            yield from self._native(job, timeout_s)
            return
        with tempfile.TemporaryDirectory(prefix="harness-job-") as tmp:
            job_path = Path(tmp) / "job.json"
            job.dump(job_path)
            yield protocol.State("before", host_state())
            with open(Path(tmp) / "stderr.txt", "w+") as stderr:
                since = CpuTimes.read()
                process = subprocess.Popen(
                    [sys.executable, "-m", "harness.run.runner", str(job_path)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                )
                try:
                    yield from _events(process, stderr, time.monotonic() + timeout_s, timeout_s, since)
                finally:
                    if process.poll() is None:
                        process.kill()
                    process.wait()


    def _native(self, job: Job, timeout_s: float) -> Iterator[protocol.Event]:
        deadline = time.monotonic() + timeout_s
        with tempfile.TemporaryDirectory(prefix="harness-native-") as tmp:
            folder = Path(tmp)
            try:
                plan = native.plan(job, native.Place(host_build=True, root=str(folder)))
                for relative, local in plan.files.items():  # the deployment, linked in place
                    (folder / relative).parent.mkdir(parents=True, exist_ok=True)
                    (folder / relative).symlink_to(local.resolve())
                yield protocol.State("before", host_state())
                yield from native.events(job, plan, lambda argv, env, left: _execute(folder, argv, env, left), deadline)
            except TimeoutError:
                raise TargetError(f"runtime {job.variant['runtime']!r} timed out after {timeout_s:g} s") from None
            yield protocol.State("after", host_state())


def _execute(folder: Path, argv: list[str], env: dict[str, str], timeout_s: float) -> native.Outcome:
    """One tool process in `folder`, under `time -v` (harness/measure/timev.py) for its peak RSS."""
    process = subprocess.Popen([sys.executable, "-S", timev.__file__, "-v", *argv], cwd=folder,
                               env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # time and the tool
        process.communicate()
        raise TimeoutError from None
    return native.Outcome.timed(process.returncode, stdout, stderr)


def _events(process: subprocess.Popen, stderr, deadline: float, timeout_s: float,
            since: CpuTimes) -> Iterator[protocol.Event]:
    lines: queue.Queue[str | None] = queue.Queue()
    load_peak = None
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
        try:
            event = protocol.parse(line)
        except protocol.ProtocolError as exc:
            process.kill()
            raise TargetError(f"runner output garbled: {exc}") from None
        match event:
            case protocol.Error(error=error):
                raise TargetError(f"runner failed: {error}")
            case protocol.Loaded():
                load_peak = peak_rss_bytes(process.pid)
                reset_peak_rss(process.pid)  # from here VmHWM is the serving peak
                yield event
            case protocol.Measured():
                yield protocol.Process(peak_rss_bytes(process.pid), pss_bytes(process.pid), load_peak)
                yield protocol.State("after", host_state(since, process.pid))
            case protocol.Done():
                process.stdin.close()
                process.wait()
                return
            case _:
                yield event


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _tail(stderr) -> str:
    stderr.seek(0)
    text = stderr.read().strip().splitlines()
    return text[-1] if text else "(no stderr)"
