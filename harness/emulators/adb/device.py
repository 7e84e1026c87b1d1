"""One emulated phone: a sandbox directory, real processes, device state files, faults.

Device paths resolve inside the sandbox: `/data/local/tmp` and `/sdcard` are writable
folders, `/sys/...` holds the thermal, battery and cpufreq files. Shell commands run in a
real `/bin/sh`, confined (`confine.py`): the device's folders are mounted at their device
paths and `/proc` lists the device's own processes. Unconfined (a host without user
namespaces, and the user said so), they run as this user on the host, with those device
paths rewritten to the sandbox and `/proc/<pid>` a link to the host's for the device's
own processes only.
"""

from __future__ import annotations

import os
import posixpath
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from harness.emulators.adb import tools
from harness.emulators.adb.confine import DeviceNamespaces
from harness.emulators.adb.profiles import Profile
from harness.measure import timev
from harness.measure.host import cpu_mhz, has_cpufreq, rss_bytes

WRITABLE = ("/data/local/tmp", "/sdcard")
READABLE = WRITABLE + ("/proc", "/sys")
# A device path in a shell command: /data, /sdcard, /proc or /sys not inside another path.
_DEVICE_PATH = re.compile(r"(?<![\w./-])/(?=(?:data|sdcard|proc|sys)(?:/|\b))")
THERMAL_ZONES = ("AP", "BAT", "SKIN")  # HAL types CPU, BATTERY, SKIN in dumpsys thermalservice
DEFAULT_RUNNER = "harness.run.runner"  # what drop-run / hang match unless given a pattern


class FaultError(ValueError):
    """A fault specification that is not understood."""


@dataclass
class Faults:
    """Injected faults. One-shot faults clear when they fire; the others stay until `clear`."""

    drop_push: bool = False  # close the connection in the middle of the next push
    drop_run: str | None = None  # close the connection of the next command containing this text, once it printed
    hang: str | None = None  # stop (SIGSTOP) the next command containing this text
    oom_bytes: int | None = None  # SIGKILL any process whose resident set grows past this
    slow_bytes_per_s: float | None = None  # throttle pushes, pulls and shell output
    full: bool = False  # storage full: pushes fail with ENOSPC
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self, name: str, command: str) -> bool:
        """True once if the one-shot fault `name` is armed for `command`."""
        with self.lock:
            pattern = getattr(self, name)
            if pattern and (pattern is True or pattern in command):
                setattr(self, name, False if pattern is True else None)
                return True
            return False


def parse_size(text: str) -> float:
    """'200M', '1.5G', '4096' -> bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]?)", text.strip().upper())
    if not match:
        raise FaultError(f"not a size: {text!r} (examples: 4096, 512K, 200M, 1G)")
    return float(match[1]) * 1024 ** " KMG".index(match[2] or " ")


class EmulatedDevice:
    def __init__(self, profile: Profile, serial: str, root: Path, transport_id: int, confined: bool = True) -> None:
        self.profile, self.serial, self.root, self.transport_id = profile, serial, root, transport_id
        self.faults = Faults()
        self.processes: dict[int, subprocess.Popen] = {}
        self._groups: dict[int, int] = {}  # process pid -> host pid of the command's process group
        self._setup(proc="/proc" if confined else f"{root}/proc")
        self.namespaces = DeviceNamespaces(root) if confined else None

    # -- the sandbox -------------------------------------------------------------------
    def _setup(self, proc: str) -> None:
        for folder in ("data/local/tmp", "sdcard", "proc", "hil", "system/bin", "sys/class/power_supply/battery"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        props = {**self.profile.props, "ro.serialno": self.serial}
        (self.root / "hil/build.prop").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        scripts = {"getprop": tools.GETPROP.format(root=self.root),
                   "dumpsys": tools.DUMPSYS.format(root=self.root, proc=proc),
                   "time": f"#!{sys.executable} -S\n" + Path(timev.__file__).read_text()}
        for name, script in scripts.items():
            path = self.root / "system/bin" / name
            path.write_text(script)
            path.chmod(0o755)
        for index, kind in enumerate(THERMAL_ZONES):
            zone = self.root / f"sys/class/thermal/thermal_zone{index}"
            zone.mkdir(parents=True, exist_ok=True)
            (zone / "type").write_text(kind + "\n")
        self.set_thermal(0, 30.0)
        # A phone on a farm sits on USB power: the emulated one reports that (no energy numbers).
        self.set_battery("usb")
        self._write("hil/wakefulness", "Asleep")
        self.refresh_cpufreq()

    def _write(self, relative: str, value: object) -> None:
        (self.root / relative).write_text(f"{value}\n")

    def set_thermal(self, status: int, temp_c: float) -> None:
        if not 0 <= status <= 6:
            raise FaultError(f"thermal status {status} out of range 0..6")
        self._write("hil/thermal_status", status)
        for index in range(len(THERMAL_ZONES)):
            self._write(f"sys/class/thermal/thermal_zone{index}/temp", round(temp_c * 1000))
        self._write("sys/class/power_supply/battery/temp", round(temp_c * 10))

    def set_battery(self, plugged: str, current_ma: float | None = None) -> None:
        """'usb' or 'ac': charging at full level; 'none': discharging, drawing `current_ma` when
        given. This host has no battery to read: without a current the device has no
        current_now file, so nothing reads a made-up energy."""
        if plugged not in ("usb", "ac", "none"):
            raise FaultError(f"battery {plugged!r}: allowed usb, ac, none")
        self._write("hil/plugged", plugged)
        battery = "sys/class/power_supply/battery"
        self._write(f"{battery}/status", "Full" if plugged != "none" else "Discharging")
        self._write(f"{battery}/capacity", 100)
        self._write(f"{battery}/voltage_now", 4_350_000)  # uV
        current = self.root / battery / "current_now"
        if current_ma is None:
            current.unlink(missing_ok=True)
        else:
            self._write(f"{battery}/current_now", round(-current_ma * 1000))  # uA, negative: discharging

    def refresh_cpufreq(self) -> None:
        """One cpufreq policy per host CPU, at the host CPU's current clock; none when the host
        kernel has no cpufreq (its figure would be nominal, not a clock the device runs at)."""
        if not has_cpufreq():
            return
        for index, value in enumerate(cpu_mhz()):
            policy = self.root / f"sys/devices/system/cpu/cpufreq/policy{index}"
            policy.mkdir(parents=True, exist_ok=True)
            (policy / "scaling_cur_freq").write_text(f"{round(value * 1000)}\n")

    def path(self, device_path: str, write: bool = False) -> Path:
        """The sandbox file for a device path; PermissionError outside what the shell user may touch."""
        normal = posixpath.normpath(device_path)
        allowed = WRITABLE if write else READABLE
        if not normal.startswith("/") or not any(normal == r or normal.startswith(r + "/") for r in allowed):
            raise PermissionError(f"{device_path}: Permission denied")
        return self.root / normal.lstrip("/")

    def rewrite(self, command: str) -> str:
        return _DEVICE_PATH.sub(str(self.root) + "/", command)

    # -- processes ---------------------------------------------------------------------
    def spawn(self, command: str, merged: bool) -> subprocess.Popen:
        """`sh -c command` on the device, in its own process group; stdout (and stderr) piped."""
        self.refresh_cpufreq()
        home = "/data/local/tmp" if self.namespaces else str(self.root / "data/local/tmp")
        env = {
            "PATH": f"{self.root}/system/bin:{Path(sys.executable).parent}:/usr/bin:/bin",
            "HOME": home,
            "TMPDIR": home,
            "LANG": "C.UTF-8",
            **{k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "OMP_NUM_THREADS")},
        }
        stdio = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE,
                 "stderr": subprocess.STDOUT if merged else subprocess.PIPE, "bufsize": 0}
        # The shell waits for a first stdin line until it is set up (its group known, its /proc
        # link made), then runs the command itself (same pid); `read` takes that line only.
        script = ["/bin/sh", "-c", 'read _; eval "$1"', "sh"]
        if self.namespaces:
            process, group = self.namespaces.spawn([*script, command], env, **stdio)
        else:
            process = subprocess.Popen([*script, self.rewrite(command)], cwd=self.root, env=env,
                                       start_new_session=True, **stdio)
            group = process.pid
            link = self.root / "proc" / str(process.pid)
            link.unlink(missing_ok=True)
            link.symlink_to(f"/proc/{process.pid}")
        self.processes[process.pid], self._groups[process.pid] = process, group
        process.stdin.write(b"\n")
        if self.faults.take("hang", command):
            os.killpg(group, signal.SIGSTOP)
        if self.faults.oom_bytes:
            threading.Thread(target=self._oom_watch, args=(process, self.faults.oom_bytes), daemon=True).start()
        return process

    def kill(self, process: subprocess.Popen) -> None:
        """SIGKILL the command's process group (and, confined, the bubblewrap that waits for it)."""
        for group in {self._groups.get(process.pid, process.pid), process.pid}:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def reap(self, process: subprocess.Popen) -> int:
        """Kill what is left of the command's process group; its exit code as adbd reports it."""
        if process.poll() is None:
            self.kill(process)
        code = process.wait()
        self.processes.pop(process.pid, None)
        self._groups.pop(process.pid, None)
        (self.root / "proc" / str(process.pid)).unlink(missing_ok=True)
        return 128 - code if code < 0 else code  # killed by signal N -> 128 + N

    def close(self) -> None:
        for process in list(self.processes.values()):
            self.kill(process)
        if self.namespaces:
            self.namespaces.close()

    def _oom_watch(self, process: subprocess.Popen, limit: float) -> None:
        """What the low-memory killer does: SIGKILL once a process of the command (the runner, or
        a native tool under `time -v`) has a resident set past the limit."""
        while process.poll() is None:
            try:
                leader = psutil.Process(self._groups.get(process.pid, process.pid))
                rss = max(_rss(p) for p in [leader, *leader.children(recursive=True)])
            except psutil.Error:
                return
            if rss > limit:
                self.kill(process)
                return
            time.sleep(0.02)

    # -- control -----------------------------------------------------------------------
    def inject(self, spec: str) -> None:
        """Apply a fault specification (see `FAULTS`)."""
        name, _, argument = spec.partition(":")
        faults = self.faults
        with faults.lock:
            if name == "drop-push":
                faults.drop_push = True
            elif name == "drop-run":
                faults.drop_run = argument or DEFAULT_RUNNER
            elif name == "hang":
                faults.hang = argument or DEFAULT_RUNNER
            elif name == "oom":
                faults.oom_bytes = int(parse_size(argument))
            elif name == "slow":
                faults.slow_bytes_per_s = parse_size(argument)
            elif name == "full":
                faults.full = True
            elif name == "thermal":
                status, _, temp = argument.partition(":")
                self.set_thermal(int(status), float(temp or 30.0))
            elif name == "battery":
                plugged, _, current = argument.partition(":")
                self.set_battery(plugged, float(current) if current else None)
            elif name == "clear":
                self.faults = Faults()
                self.set_thermal(0, 30.0)
                self.set_battery("usb")
            else:
                raise FaultError(f"unknown fault {spec!r}; allowed: {', '.join(FAULTS)}")


def _rss(process: psutil.Process) -> int:
    try:
        return rss_bytes(process.pid)
    except psutil.Error:  # ended between the listing and the reading
        return 0


FAULTS = {
    "drop-push": "close the connection in the middle of the next push",
    "drop-run[:TEXT]": f"close the connection of the next command containing TEXT (default {DEFAULT_RUNNER})",
    "hang[:TEXT]": "stop the next command containing TEXT; it never answers",
    "oom:SIZE": "kill any process whose resident set passes SIZE, as the low-memory killer would",
    "slow:RATE": "throttle the link to RATE bytes/s (e.g. 1M)",
    "full": "storage full: pushes fail with 'No space left on device'",
    "thermal:STATUS[:TEMP_C]": "set the thermal status (0..6) and temperatures",
    "battery:usb|ac|none[:MA]": "charging on USB/AC, or discharging (drawing MA milliamps, when given)",
    "clear": "remove every fault and restore the default state",
}
