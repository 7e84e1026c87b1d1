"""An emulated phone's shells, confined as a phone confines adbd's: bubblewrap namespaces.

A real adb server reaches only the phone. The emulator's shells run on this host, so each
runs in bubblewrap as Android's `shell` user (uid 2000, mapped to whoever runs the emulator)
with no host network, the host file system absent except the system's programs and the
Python environment (read-only, so the reference runner runs), the device's writable folders
bound at their device paths, and `/sys` the device's own state files.

One holder process per device owns its user and pid namespaces; every shell joins them
(`--userns`, `--pidns`), so `/proc` lists the device's processes only and a pid printed by
one shell (`echo $$`) is the one a later `cat /proc/PID/status` or `kill` names, as on a
phone. The holder reads its stdin, which only this process writes: if the emulator dies,
however it dies, the holder ends and the kernel kills every process in the device.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import harness

SHELL_UID = 2000  # Android's `shell` user, as `adb shell id` prints it
# What the shell's file system shows of the device sandbox: (sandbox folder, device path, writable).
DEVICE_MOUNTS = (("data/local/tmp", "/data/local/tmp", True), ("sdcard", "/sdcard", True),
                 ("sys", "/sys", False), ("system", "/system", False))
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Of /etc, only what programs need to be found and linked (Debian's `awk` is an alternative).
_ETC = ("/etc/alternatives", "/etc/ld.so.cache")


class ConfinementError(RuntimeError):
    """The host cannot confine device shells (no bubblewrap, or no user namespaces)."""


def unavailable() -> str | None:
    """Why this host cannot confine device shells, or None when it can (a trial sandbox)."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed (Debian: apt install bubblewrap)"
    trial = subprocess.run(["bwrap", "--unshare-user", "--unshare-pid", "--unshare-net", *_system(), "--", "true"],
                           capture_output=True, text=True)
    if trial.returncode != 0:
        return f"bubblewrap cannot make namespaces here: {trial.stderr.strip() or trial.returncode}"
    return None


def python_environment() -> list[Path]:
    """What the reference runner needs, read-only: the interpreter, the environment with its
    packages, this package's folder, and the PYTHONPATH a device shell is given."""
    folders = {Path(sys.base_prefix), Path(sys.prefix), Path(harness.__file__).parent}
    folders |= {Path(entry) for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry}
    folders = {folder.resolve() for folder in folders if folder.is_dir()}
    return sorted(f for f in folders if not any(other in f.parents for other in folders))


def _system() -> list[str]:
    """The host's programs and libraries, read-only (merged-/usr symlinks kept as symlinks)."""
    argv = []
    for path in _SYSTEM:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    for path in _ETC:
        argv += ["--ro-bind-try", path, path]
    return argv


class DeviceNamespaces:
    """The namespaces of one emulated phone, and shells started inside them."""

    def __init__(self, root: Path) -> None:
        self._mounts = _mounts(root, python_environment())
        self._holder, init = _start(
            ["--unshare-user", "--uid", str(SHELL_UID), "--gid", str(SHELL_UID), "--unshare-pid", *_system(),
             "--proc", "/proc", "--", "/bin/sh", "-c", "read _"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if init is None:
            raise ConfinementError(f"the device's namespaces did not start: {self._holder.stderr.read().decode().strip()}")
        self._userns = os.open(f"/proc/{init}/ns/user", os.O_RDONLY)
        self._pidns = os.open(f"/proc/{init}/ns/pid", os.O_RDONLY)

    def spawn(self, argv: list[str], env: dict[str, str], **stdio) -> tuple[subprocess.Popen, int]:
        """`argv` as the device's shell user; the process and the host pid of its session
        leader (the command itself: bubblewrap waits for it and exits with its status)."""
        process, child = _start(
            ["--userns", str(self._userns), "--pidns", str(self._pidns), "--unshare-net", "--unshare-ipc",
             "--unshare-uts", "--hostname", "localhost", *self._mounts, "--new-session", "--chdir", "/",
             "--", *argv],
            pass_fds=(self._userns, self._pidns), env=env, start_new_session=True, **stdio)
        if child is None:
            return process, process.pid
        _await_session(process, child)
        return process, child

    def close(self) -> None:
        """End the device: its holder ends, and the kernel kills what is left in its pid namespace."""
        self._holder.stdin.close()
        self._holder.wait()
        os.close(self._userns)
        os.close(self._pidns)


def _mounts(root: Path, readonly: list[Path]) -> list[str]:
    argv = [*_system(), "--proc", "/proc", "--dev", "/dev"]
    for folder in readonly:
        argv += ["--ro-bind", str(folder), str(folder)]
    argv += ["--ro-bind", str(root), str(root)]  # the device's own state files (getprop, dumpsys read them)
    for folder, device_path, writable in DEVICE_MOUNTS:
        argv += ["--bind" if writable else "--ro-bind", str(root / folder), device_path]
    return [*argv, "--remount-ro", "/"]


def _await_session(process: subprocess.Popen, child: int) -> None:
    """Until the command leads its own session (bubblewrap reports the pid before the child
    sets it up), so that signalling its group reaches it."""
    while process.poll() is None:
        try:
            if os.getpgid(child) == child:
                return
        except ProcessLookupError:
            return
        time.sleep(0.001)


def _start(argv: list[str], pass_fds: tuple[int, ...] = (), **popen) -> tuple[subprocess.Popen, int | None]:
    """Start bubblewrap; the host pid of the process it made (None when it failed first)."""
    info, write_end = os.pipe()
    try:
        process = subprocess.Popen(["bwrap", "--info-fd", str(write_end), *argv],
                                   pass_fds=(write_end, *pass_fds), **popen)
    finally:
        os.close(write_end)
    with os.fdopen(info, "rb") as stream:
        text = stream.read()
    return process, json.loads(text)["child-pid"] if text else None
