"""The adb target: variants run on Android phones (or emulated ones) through an adb server.

`--target adb:SERIAL` selects one device, `--target adb` every attached device. The adb
server is the one at ANDROID_ADB_SERVER_HOST / ANDROID_ADB_SERVER_PORT (default
127.0.0.1:5037), as for the `adb` CLI. Each run: read the device state and cool down
(`android.Hygiene`), deploy changed files to `FOLDER`, push the job, start the runner
with shell v2 (exit code, stderr apart), read its peak RSS and PSS from /proc when it
reports "measured", and read the device state again after it exits.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shlex
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import adbutils

from harness.errors import HarnessError
from harness.runner import Job
from harness.targets import TargetError, TargetInfo
from harness.targets.android import STATE_COMMAND, DeviceState, Hygiene, energy_j, parse_getprop, parse_state
from harness.targets.runners import ReferenceRunner, RunnerAdapter

FOLDER = "/data/local/tmp/hil-harness"
MANIFEST = ".manifest.json"  # {path in FOLDER: sha256} of what was pushed
SHELL_TIMEOUT_S = 30.0  # for the harness's own short commands
CHUNK = 64 * 1024  # the sync protocol's largest DATA record
STDIN, STDOUT, STDERR, EXIT, CLOSE_STDIN = range(5)
_LOST = (adbutils.AdbError, OSError, EOFError)  # socket.timeout is an OSError too


class DeviceError(Exception):
    """A device command or push failed (the connection itself is fine)."""


def client() -> adbutils.AdbClient:
    return adbutils.AdbClient(os.environ.get("ANDROID_ADB_SERVER_HOST", "127.0.0.1"),
                              int(os.environ.get("ANDROID_ADB_SERVER_PORT", "5037")))


def attached() -> list[adbutils.AdbDeviceInfo]:
    """Devices ready for commands; HarnessError when no adb server answers."""
    adb = client()
    try:
        with socket.create_connection((adb.host, adb.port), timeout=3):
            pass
        return [d for d in adb.list(extended=True) if d.state == "device"]
    except (OSError, adbutils.AdbError) as exc:
        raise HarnessError(f"--target adb: no adb server at {adb.host}:{adb.port} ({exc}); "
                           "start one (adb start-server, or harness emulator serve) and set ANDROID_ADB_SERVER_PORT") from None


def open_adb_targets(serial: str | None) -> list[AdbTarget]:
    devices = attached()
    if serial is not None:
        devices = [d for d in devices if d.serial == serial]
        if not devices:
            raise HarnessError(f"--target adb:{serial}: no such device attached (harness devices lists them)")
    return [AdbTarget(Phone(d.serial, int(d.tags["transport_id"]) if "transport_id" in d.tags else None))
            for d in devices]


@dataclass
class ShellResult:
    code: int
    stdout: str
    stderr: str


class Phone:
    """adb commands for one device: shell v2 with exit codes, streaming, sync push/pull.

    Connections are selected by transport id when known (no extra version query) and
    closed without adbutils' lingering shutdown, to keep the harness's overhead small."""

    def __init__(self, serial: str, transport_id: int | None = None) -> None:
        self.serial = serial
        self.device = adbutils.AdbDevice(client(), serial=serial, transport_id=transport_id)

    def _open(self, service: str, timeout: float | None) -> adbutils.AdbConnection:
        connection = self.device.open_transport(timeout=timeout)
        connection.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small records, no Nagle delay
        connection.send_command(service)
        connection.check_okay()
        return connection

    # -- shell ---------------------------------------------------------------------------
    def stream(self, command: str, timeout: float | None = SHELL_TIMEOUT_S) -> ShellStream:
        return ShellStream(self._open(f"shell,v2,raw:{command}", timeout))

    def shell(self, command: str, timeout: float = SHELL_TIMEOUT_S) -> ShellResult:
        with self.stream(command, timeout) as stream:
            stdout = "".join(stream.lines(time.monotonic() + timeout))
            return ShellResult(stream.exit_code, stdout, stream.stderr.decode(errors="replace"))

    def check(self, command: str, timeout: float = SHELL_TIMEOUT_S) -> str:
        result = self.shell(command, timeout)
        if result.code != 0:
            raise DeviceError(f"`{command}` exited with {result.code}: {result.stderr.strip() or result.stdout.strip()}")
        return result.stdout

    def getprops(self) -> dict[str, str]:
        return parse_getprop(self.check("getprop"))

    def state(self) -> DeviceState:
        return parse_state(self.shell(STATE_COMMAND).stdout, time.time())

    # -- sync ----------------------------------------------------------------------------
    def push(self, data: bytes | Path, path: str, timeout: float = SHELL_TIMEOUT_S) -> None:
        connection = self._open("sync:", timeout)
        try:
            spec = f"{path},{0o100644}".encode()
            connection.conn.sendall(b"SEND" + struct.pack("<I", len(spec)) + spec)
            with (open(data, "rb") if isinstance(data, Path) else _Bytes(data)) as source:
                while chunk := source.read(CHUNK):
                    connection.conn.sendall(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
            connection.conn.sendall(b"DONE" + struct.pack("<I", int(time.time())))
            status, length = struct.unpack("<4sI", connection.read_exact(8))
            if status != b"OKAY":
                raise DeviceError(f"push to {path} failed: {connection.read_exact(length).decode(errors='replace')}")
        finally:
            connection.conn.close()

    def read(self, path: str, timeout: float = SHELL_TIMEOUT_S) -> bytes | None:
        """A device file's content, None when it cannot be read."""
        connection = self._open("sync:", timeout)
        try:
            connection.conn.sendall(b"RECV" + struct.pack("<I", len(path.encode())) + path.encode())
            parts = []
            while True:
                kind, length = struct.unpack("<4sI", connection.read_exact(8))
                if kind == b"DONE":
                    return b"".join(parts)
                if kind != b"DATA":
                    return None
                parts.append(connection.read_exact(length))
        finally:
            connection.conn.close()


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def read(self, n: int) -> bytes:
        self.offset += n
        return self.data[self.offset - n:self.offset]

    def __enter__(self) -> _Bytes:
        return self

    def __exit__(self, *_: object) -> None:
        pass


class ShellStream:
    """A shell v2 command in progress: stdout line by line, stderr kept apart, exit code."""

    def __init__(self, connection: adbutils.AdbConnection) -> None:
        self.connection = connection
        self.stderr = bytearray()
        self.exit_code: int | None = None

    def __enter__(self) -> ShellStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.connection.conn.close()

    def lines(self, deadline: float) -> Iterator[str]:
        """stdout lines until the command exits; socket.timeout past the deadline."""
        pending = b""
        while self.exit_code is None:
            kind, data = self._packet(deadline)
            if kind == STDOUT:
                pending += data
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    yield line.decode(errors="replace") + "\n"
            elif kind == STDERR:
                self.stderr += data
            elif kind == EXIT:
                self.exit_code = data[0]
        if pending:
            yield pending.decode(errors="replace")

    def close_stdin(self) -> None:
        self.connection.conn.sendall(struct.pack("<BI", CLOSE_STDIN, 0))

    def _packet(self, deadline: float) -> tuple[int, bytes]:
        sock = self.connection.conn
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        header = self.connection.read_exact(5)
        kind, length = struct.unpack("<BI", header)
        return kind, self.connection.read_exact(length) if length else b""


class AdbTarget:
    def __init__(self, phone: Phone, adapter: RunnerAdapter | None = None, hygiene: Hygiene | None = None) -> None:
        self.phone = phone
        self.adapter = adapter or ReferenceRunner()
        self.hygiene = hygiene or Hygiene()
        self._hashes: dict[tuple[Path, float, int], str] = {}
        try:
            props = phone.getprops()
        except (*_LOST, DeviceError) as exc:
            raise HarnessError(f"--target adb:{phone.serial}: cannot read the device's identity: {exc}") from None
        self.info = TargetInfo(
            kind="adb", name=phone.serial, serial=phone.serial,
            model=props.get("ro.product.model"),
            soc=props.get("ro.soc.model") or props.get("ro.board.platform"),
            emulated=props.get("ro.hil.emulated") == "1" or props.get("ro.kernel.qemu") == "1",
            platform=props.get("ro.board.platform"),
            fingerprint=props.get("ro.build.fingerprint"),
            sdk=props.get("ro.build.version.sdk"),
        )

    def run(self, job: Job, timeout_s: float) -> Iterator[dict]:
        try:
            yield from self._run(job, timeout_s)
        except DeviceError as exc:
            raise TargetError(f"device {self.phone.serial}: {exc}") from None
        except _LOST as exc:
            raise TargetError(f"device {self.phone.serial} lost: {_reason(exc)}") from None

    def _run(self, job: Job, timeout_s: float) -> Iterator[dict]:
        try:
            before = self.hygiene.settle(self.phone.state)
        except ValueError as exc:
            raise TargetError(str(exc)) from None
        yield {"event": "device", "phase": "before", "state": before.as_dict()}
        deadline = time.monotonic() + timeout_s
        self.deploy(self.adapter.files(job), deadline)
        self.phone.push(self.adapter.job_file(job), f"{FOLDER}/job.json", _left(deadline))
        command = f"cd {shlex.quote(FOLDER)} && echo $$ && exec {self.adapter.command('job.json')}"
        with self.phone.stream(command, timeout=None) as stream:
            yield from self._events(stream, deadline, timeout_s)
        after = self.phone.state()
        energy = energy_j(before, after)
        yield {"event": "device", "phase": "after", "state": after.as_dict(), "energy_j": energy}

    def _events(self, stream: ShellStream, deadline: float, timeout_s: float) -> Iterator[dict]:
        lines = stream.lines(deadline)
        pid = None
        try:
            first = next(lines, "")
            if not first.strip().isdigit():  # the shell failed before starting the runner
                for _ in lines:
                    pass
                raise TargetError(f"runner did not start (exit code {stream.exit_code}): {_last_line(stream.stderr)}")
            pid = int(first)
            for line in lines:
                event = self.adapter.parse(line)
                if event is None:
                    continue
                if event["event"] == "error":
                    raise TargetError(f"runner failed: {event['error']}")
                if event["event"] == "measured":
                    yield {"event": "process", **self.memory(pid)}
                elif event["event"] == "done":
                    stream.close_stdin()
                else:
                    yield event
        except (socket.timeout, adbutils.AdbTimeout):
            if pid is not None:
                self.phone.shell(f"kill -9 {pid}")
            raise TargetError(f"runner timed out after {timeout_s:g} s (killed on the device)") from None
        if stream.exit_code != 0:
            raise TargetError(f"runner exited with code {stream.exit_code}{_signal(stream.exit_code)}: "
                              f"{_last_line(stream.stderr)}")

    def memory(self, pid: int) -> dict:
        """Peak RSS (VmHWM) and PSS of the runner, from /proc on the device (kB there)."""
        text = self.phone.check(f"cat /proc/{pid}/status /proc/{pid}/smaps_rollup")
        values = {}
        for line in text.splitlines():  # "VmHWM:   123456 kB", "Pss:   2345 kB"
            fields = line.split()
            if len(fields) == 3 and fields[2] == "kB":
                values[fields[0]] = int(fields[1]) * 1024
        if "VmHWM:" not in values:
            raise TargetError(f"no VmHWM in /proc/{pid}/status on {self.phone.serial}")
        return {"peak_rss_bytes": values["VmHWM:"], "pss_bytes": values.get("Pss:")}

    def deploy(self, files: dict[str, Path], deadline: float | None = None) -> list[str]:
        """Push what changed since the last deployment (by sha256); returns the paths pushed."""
        manifest = json.loads(self.phone.read(f"{FOLDER}/{MANIFEST}") or b"{}")
        pushed = []
        for relative, local in files.items():
            path = inside_folder(relative)
            digest = self._sha256(local)
            if manifest.get(relative) != digest:
                self.phone.push(local, path, _left(deadline))
                manifest[relative] = digest
                pushed.append(relative)
        if pushed:
            self.phone.push(json.dumps(manifest, indent=1).encode(), f"{FOLDER}/{MANIFEST}", _left(deadline))
        return pushed

    def cleanup(self) -> None:
        self.phone.check(f"rm -rf {shlex.quote(FOLDER)}")

    def _sha256(self, path: Path) -> str:
        info = path.stat()
        key = (path, info.st_mtime, info.st_size)
        if key not in self._hashes:
            with open(path, "rb") as file:
                self._hashes[key] = hashlib.file_digest(file, "sha256").hexdigest()
        return self._hashes[key]


def inside_folder(relative: str) -> str:
    """The device path of a file in the harness folder; HarnessError if it would land outside."""
    normal = posixpath.normpath(relative)
    if relative.startswith("/") or normal == ".." or normal.startswith("../") or normal == ".":
        raise HarnessError(f"deployment path {relative!r} leaves the harness folder {FOLDER}")
    return f"{FOLDER}/{normal}"


def _left(deadline: float | None) -> float:
    return SHELL_TIMEOUT_S if deadline is None else max(0.1, deadline - time.monotonic())


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (socket.timeout, adbutils.AdbTimeout)):
        return "no answer within the time limit"
    if isinstance(exc, (EOFError, ConnectionError)):
        return f"connection closed ({type(exc).__name__}{': ' + str(exc) if str(exc) else ''})"
    return str(exc) or type(exc).__name__


def _signal(code: int | None) -> str:
    if code == 137:
        return " (killed by SIGKILL: the low-memory killer or a kill -9)"
    return f" (signal {code - 128})" if code and code > 128 else ""


def _last_line(data: bytes) -> str:
    lines = data.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "(no stderr)"
