"""adb commands for one device: shell v2 with exit codes, streaming, sync push and pull.

The adb server is the one at ANDROID_ADB_SERVER_HOST / ANDROID_ADB_SERVER_PORT (default
127.0.0.1:5037), as for the `adb` CLI.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import adbutils

from harness.errors import HarnessError
from harness.targets.adb.device_state import STATE_COMMAND, DeviceState, parse_getprop, parse_state

SHELL_TIMEOUT_S = 30.0  # for the harness's own short commands
CHUNK = 64 * 1024  # the sync protocol's largest DATA record
STDIN, STDOUT, STDERR, EXIT, CLOSE_STDIN = range(5)
LOST = (adbutils.AdbError, OSError, EOFError)  # the connection is gone; socket.timeout is an OSError too


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
