"""A loopback adb server for emulated devices: host protocol, shell (v1, v2) and sync.

One thread per client connection, as clients open a fresh connection per command.
Sync data moves in large reads and single writes per record, so a push runs at loopback
speed. Protocol reference: AOSP packages/modules/adb (SERVICES.TXT, SYNC.TXT, shell_protocol.h).
"""

from __future__ import annotations

import io
import os
import socket
import struct
import threading
import time
from pathlib import Path

from harness.emulators.adb.confine import ConfinementError, unavailable
from harness.emulators.adb.device import EmulatedDevice, FaultError
from harness.emulators.adb.profiles import PROFILES

VERSION = 41
FEATURES = "shell_v2,cmd,fixed_push_mkdir"  # only what is implemented: no stat_v2, no sendrecv_v2
SYNC_CHUNK = 64 * 1024
# shell v2 packet ids
STDIN, STDOUT, STDERR, EXIT, CLOSE_STDIN, WINDOW_SIZE = range(6)


class _Dropped(Exception):
    """A fault closed the connection."""


class AdbServer:
    def __init__(self, profiles: list[str], root: Path, port: int = 0, confined: bool = True,
                 name: str = "emu") -> None:
        """Serials are `NAME-PROFILE` (a farm's emulator servers each take their own name, as
        phones have their own serials). Unconfined shells run as this user on this host's files:
        only for a host without user namespaces, when its user says so (`--unconfined-shells`)."""
        if confined and (why := unavailable()):
            raise ConfinementError(f"device shells cannot be confined on this host: {why}; "
                                   "--unconfined-shells runs them as this user on this host's files")
        self.devices: dict[str, EmulatedDevice] = {}
        for index, profile in enumerate(profiles, start=1):
            if profile not in PROFILES:
                raise ValueError(f"unknown device {profile!r}; allowed: {', '.join(PROFILES)}")
            serial = f"{name}-{profile}" + ("" if profiles.count(profile) == 1 else f"-{profiles[:index].count(profile)}")
            self.devices[serial] = EmulatedDevice(PROFILES[profile], serial, root / serial, index, confined)
        self._socket = socket.create_server(("127.0.0.1", port))  # loopback only
        self.port = self._socket.getsockname()[1]
        self._thread: threading.Thread | None = None

    def start(self) -> AdbServer:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:  # closed
                return
            threading.Thread(target=_Connection(self, connection).handle, daemon=True).start()

    def close(self) -> None:
        try:
            self._socket.shutdown(socket.SHUT_RDWR)  # wakes the accept() of serve_forever
        except OSError:
            pass
        self._socket.close()
        for device in self.devices.values():
            device.close()

    def find(self, serial: str | None = None, transport_id: int | None = None) -> EmulatedDevice:
        if transport_id is not None:
            found = [d for d in self.devices.values() if d.transport_id == transport_id]
            if not found:
                raise LookupError(f"no device with transport id '{transport_id}'")
            return found[0]
        if serial is None:
            if len(self.devices) != 1:
                raise LookupError("more than one device/emulator" if self.devices else "no devices/emulators found")
            return next(iter(self.devices.values()))
        if serial not in self.devices:
            raise LookupError(f"device '{serial}' not found")
        return self.devices[serial]


class _Connection:
    def __init__(self, server: AdbServer, sock: socket.socket) -> None:
        self.server, self.sock = server, sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = sock.makefile("rb", buffering=1 << 20)
        self.device: EmulatedDevice | None = None
        self.send_lock = threading.Lock()

    # -- framing -------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        with self.send_lock:
            self.sock.sendall(data)

    def okay(self, payload: str | None = None) -> None:
        self.send(b"OKAY" + (b"" if payload is None else _block(payload)))

    def fail(self, message: str) -> None:
        self.send(b"FAIL" + _block(message))

    def read_exact(self, n: int) -> bytes:
        data = self.reader.read(n)
        if len(data) < n:
            raise EOFError
        return data

    def request(self) -> str:
        return self.read_exact(int(self.read_exact(4), 16)).decode()

    def throttle(self, nbytes: int) -> None:
        rate = self.device.faults.slow_bytes_per_s if self.device else None
        if rate:
            time.sleep(nbytes / rate)

    # -- dispatch ------------------------------------------------------------------------
    def handle(self) -> None:
        try:
            self.host(self.request())
            if self.device is not None:  # a transport was selected: one device service follows
                self.service(self.request())
        except (EOFError, ConnectionError, _Dropped, OSError):
            pass
        finally:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()

    def host(self, request: str) -> None:
        """Host services: queries answered by the server, and transport selection."""
        try:
            if request.startswith("host-serial:"):
                serial, _, command = request[len("host-serial:"):].partition(":")
                self.device_query(self.server.find(serial=serial), command)
            elif request.startswith("host-transport-id:"):
                tid, _, command = request[len("host-transport-id:"):].partition(":")
                self.device_query(self.server.find(transport_id=int(tid)), command)
            elif request.startswith(("host:", "host-usb:", "host-local:")):
                self.host_command(request.partition(":")[2])
            else:
                self.fail(f"unknown host service '{request}'")
        except LookupError as exc:
            self.fail(str(exc.args[0]))
        except ValueError:
            self.fail(f"bad host service '{request}'")

    def host_command(self, command: str) -> None:
        if command == "version":
            self.okay(f"{VERSION:04x}")
        elif command in ("devices", "devices-l"):
            self.okay("".join(self.device_line(d, command == "devices-l") for d in self.server.devices.values()))
        elif command in ("features", "host-features"):
            self.okay(FEATURES)
        elif command in ("transport-any", "tport:any"):
            self.select(self.server.find(), command.startswith("tport"))
        elif command.startswith(("transport:", "tport:serial:")):
            self.select(self.server.find(serial=command.rpartition(":")[2]), command.startswith("tport"))
        elif command.startswith(("transport-id:", "tport:transport-id:")):
            self.select(self.server.find(transport_id=int(command.rpartition(":")[2])), command.startswith("tport"))
        elif command in ("get-state", "get-serialno"):
            self.device_query(self.server.find(), command)
        elif command == "kill":
            self.okay()
        else:
            self.fail(f"unknown host service 'host:{command}'")

    def device_query(self, device: EmulatedDevice, command: str) -> None:
        if command == "features":
            self.okay(FEATURES)
        elif command == "get-state":
            self.okay("device")
        elif command == "get-serialno":
            self.okay(device.serial)
        elif command.startswith("hil-fault:"):  # the emulator's control service
            try:
                device.inject(command[len("hil-fault:"):])
            except FaultError as exc:
                self.fail(str(exc))
                return
            self.okay("")
        else:
            self.fail(f"unknown host service '{command}'")

    def select(self, device: EmulatedDevice, tport: bool) -> None:
        self.device = device
        self.send(b"OKAY" + (struct.pack("<Q", device.transport_id) if tport else b""))

    @staticmethod
    def device_line(device: EmulatedDevice, extended: bool) -> str:
        if not extended:
            return f"{device.serial}\tdevice\n"
        p = device.profile
        return (f"{device.serial}\tdevice product:{p.product} model:{p.model.replace('-', '_')} "
                f"device:{p.device} transport_id:{device.transport_id}\n")

    def service(self, request: str) -> None:
        """Device services, after a transport was selected."""
        name, _, command = request.partition(":")
        if name == "sync":
            self.okay()
            _Sync(self, self.device).run()
        elif name == "shell" or name.startswith("shell,") or name == "exec":
            options = name.split(",")[1:]
            if not command:
                self.fail("interactive shells are not supported by the emulator")
            elif "v2" in options:
                self.okay()
                self.shell_v2(command)
            else:
                self.okay()
                self.shell_v1(command)
        else:
            self.fail(f"unknown service '{request}'")

    # -- shell ---------------------------------------------------------------------------
    def shell_v1(self, command: str) -> None:
        """Merged output until the command ends; no exit code (the v1 protocol has none)."""
        process = self.device.spawn(command, merged=True)
        process.stdin.close()
        try:
            self.pump(process, process.stdout, None, command)
        finally:
            self.device.reap(process)

    def shell_v2(self, command: str) -> None:
        process = self.device.spawn(command, merged=False)
        threading.Thread(target=self.stdin_pump, args=(process,), daemon=True).start()
        errors = threading.Thread(target=self.pump, args=(process, process.stderr, STDERR, command), daemon=True)
        errors.start()
        try:
            self.pump(process, process.stdout, STDOUT, command)
            errors.join()
        finally:
            code = self.device.reap(process)
        self.send(_packet(EXIT, bytes([code & 0xFF])))

    def pump(self, process, stream, packet_id: int | None, command: str) -> None:
        """Forward a process's output; a drop-run fault cuts the connection after its first line."""
        drop = packet_id == STDOUT and self.device.faults.take("drop_run", command)
        lines = 0
        while data := os.read(stream.fileno(), SYNC_CHUNK):
            self.throttle(len(data))
            self.send(data if packet_id is None else _packet(packet_id, data))
            lines += data.count(b"\n")
            if drop and lines >= 1:
                self.device.kill(process)
                self.sock.shutdown(socket.SHUT_RDWR)
                raise _Dropped

    def stdin_pump(self, process) -> None:
        """Client packets: stdin data, close-stdin; a closed client kills the command."""
        try:
            while True:
                header = self.read_exact(5)
                data = self.read_exact(struct.unpack("<I", header[1:])[0])
                if header[0] == STDIN:
                    process.stdin.write(data)
                elif header[0] == CLOSE_STDIN:
                    process.stdin.close()
        except (EOFError, OSError, ValueError):
            if process.poll() is None:
                self.device.kill(process)  # the client went away (timeout, lost link): as adbd does


class _Sync:
    """The sync protocol: STAT, LIST, SEND, RECV, QUIT."""

    def __init__(self, connection: _Connection, device: EmulatedDevice) -> None:
        self.c, self.device = connection, device

    def run(self) -> None:
        while True:
            command, length = struct.unpack("<4sI", self.c.read_exact(8))
            if command == b"QUIT":
                return
            path = self.c.read_exact(length).decode()
            handler = {b"STAT": self.stat, b"LIST": self.list, b"SEND": self.receive_file, b"RECV": self.send_file}
            if command not in handler:
                self.fail(f"unknown sync command {command!r}")
                return
            handler[command](path)

    def fail(self, message: str) -> None:
        data = message.encode()
        self.c.send(b"FAIL" + struct.pack("<I", len(data)) + data)

    def stat(self, path: str) -> None:
        try:
            info = self.device.path(path).stat()
            self.c.send(b"STAT" + struct.pack("<III", info.st_mode, info.st_size & 0xFFFFFFFF, int(info.st_mtime)))
        except OSError:
            self.c.send(b"STAT" + bytes(12))

    def list(self, path: str) -> None:
        records = []
        try:
            folder = self.device.path(path)
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                info = entry.stat(follow_symlinks=False)
                name = entry.name.encode()
                records.append(b"DENT" + struct.pack("<IIII", info.st_mode, info.st_size & 0xFFFFFFFF,
                                                     int(info.st_mtime), len(name)) + name)
        except OSError:
            pass
        self.c.send(b"".join(records) + b"DONE" + bytes(16))

    def receive_file(self, spec: str) -> None:
        """SEND: DATA chunks then DONE(mtime); the file appears only when complete."""
        path, _, mode = spec.rpartition(",")
        error = None
        try:
            target = self.device.path(path, write=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial")
            output: io.BufferedWriter | None = open(partial, "wb")
        except OSError as exc:
            error, output = f"couldn't create file: {exc.strerror or exc}", None
        drop = self.device.faults.take("drop_push", path)
        received = 0
        while True:
            command, length = struct.unpack("<4sI", self.c.read_exact(8))
            if command == b"DONE":
                mtime = length
                break
            if command != b"DATA":
                raise EOFError
            data = self.c.read_exact(length)
            self.c.throttle(length)
            received += length
            if drop:  # after the first chunk: the file is half-sent
                output.close()
                partial.unlink(missing_ok=True)
                raise _Dropped
            if self.device.faults.full and error is None:
                error = "write failed: No space left on device"
            if output and error is None:
                output.write(data)
        if output:
            output.close()
            if error is None:
                os.chmod(partial, (int(mode) if mode else 0o644) & 0o777)
                os.utime(partial, (mtime, mtime))
                os.replace(partial, target)
            else:
                partial.unlink(missing_ok=True)
        if error:
            self.fail(error)
        else:
            self.c.send(b"OKAY" + bytes(4))

    def send_file(self, path: str) -> None:
        try:
            source = open(self.device.path(path), "rb")
        except OSError as exc:
            self.fail(f"open failed: {exc.strerror or exc}")
            return
        with source:
            while chunk := source.read(SYNC_CHUNK):
                self.c.throttle(len(chunk))
                self.c.send(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
        self.c.send(b"DONE" + bytes(4))


def _block(text: str) -> bytes:
    data = text.encode()
    return f"{len(data):04x}".encode() + data


def _packet(packet_id: int, data: bytes) -> bytes:
    return struct.pack("<BI", packet_id, len(data)) + data
