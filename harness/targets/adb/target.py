"""The adb target: variants run on Android phones (or emulated ones) through an adb server.

`--target adb:SERIAL` selects one device, `--target adb` every attached device (see
`client` for which adb server). Each run: read the device state and cool down
(`device_state.Hygiene`), deploy changed files to `FOLDER`, push the job, start the runner
with shell v2 (exit code, stderr apart), read its peak RSS and PSS from /proc when it
reports "measured", and read the device state again after it exits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import posixpath
import shlex
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import adbutils

from harness.errors import HarnessError
from harness.measure.host import proc_kb_fields
from harness.run import native, protocol
from harness.runtimes import llamacpp
from harness.run.protocol import Job
from harness.targets.base import TargetError, TargetInfo
from harness.targets.adb.client import LOST, SHELL_TIMEOUT_S, DeviceError, Phone, ShellStream, attached
from harness.targets.adb.device_state import BatterySampler, Hygiene
from harness.targets.adb.runtimes import ReferenceRunner, RunnerAdapter

FOLDER = "/data/local/tmp/hil-harness"
MANIFEST = ".manifest.json"  # {path in FOLDER: sha256} of what was pushed


def open_adb_targets(serial: str | None) -> list[AdbTarget]:
    devices = attached()
    if serial is not None:
        devices = [d for d in devices if d.serial == serial]
        if not devices:
            raise HarnessError(f"--target adb:{serial}: no such device attached (harness devices lists them)")
    return [AdbTarget(Phone(d.serial, int(d.tags["transport_id"]) if "transport_id" in d.tags else None))
            for d in devices]


class AdbTarget:
    def __init__(self, phone: Phone, hygiene: Hygiene | None = None) -> None:
        self.phone = phone
        self.runner: RunnerAdapter = ReferenceRunner()
        self.hygiene = hygiene or Hygiene()
        self._hashes: dict[tuple[Path, float, int], str] = {}
        try:
            props = phone.getprops()
        except (*LOST, DeviceError) as exc:
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

    def run(self, job: Job, timeout_s: float) -> Iterator[protocol.Event]:
        try:
            yield from self._run(job, timeout_s)
        except DeviceError as exc:
            raise TargetError(f"device {self.phone.serial}: {exc}") from None
        except LOST as exc:
            raise TargetError(f"device {self.phone.serial} lost: {_reason(exc)}") from None

    def _run(self, job: Job, timeout_s: float) -> Iterator[protocol.Event]:
        try:
            before = self.hygiene.settle(self.phone.state)
        except ValueError as exc:
            raise TargetError(str(exc)) from None
        yield protocol.State("before", before.as_dict())
        deadline = time.monotonic() + timeout_s
        runtime = job.variant["runtime"]
        if runtime != "reference":
            yield from self._native(job, deadline, timeout_s)
            yield protocol.State("after", self.phone.state().as_dict())
            return
        adapter = self.runner
        self.deploy(adapter.files(job), deadline)
        self.phone.push(adapter.job_file(job), f"{FOLDER}/job.json", _left(deadline))
        command = f"cd {shlex.quote(FOLDER)} && echo $$ && exec {adapter.command('job.json')}"
        battery = None if before.charging else BatterySampler(Phone(self.phone.serial))  # on battery only
        with self.phone.stream(command, timeout=None) as stream, battery or contextlib.nullcontext():
            yield from self._events(adapter, stream, deadline, timeout_s, battery)
        after = self.phone.state()
        energy = battery.energy_j() if battery is not None and not after.charging else None
        yield protocol.State("after", after.as_dict(), energy)

    def _native(self, job: Job, deadline: float, timeout_s: float) -> Iterator[protocol.Event]:
        """A native tool per request (`harness.run.native`); an emulated phone runs llama.cpp's
        host build, a real one the scenario's device build."""
        runtime = job.variant["runtime"]
        try:
            plan = native.plan(job, native.Place(host_build=self.info.emulated, root=FOLDER, soc=self.info.soc))
            self.deploy(plan.files, deadline)
            binaries = [inside_folder(path) for path in plan.files if "/bin/" in path or path.endswith("llama_main")]
            self.phone.check("chmod 755 " + " ".join(shlex.quote(path) for path in binaries))
            yield from native.events(job, plan, lambda argv, env, left: self._execute(argv, env, left), deadline)
        except TimeoutError:
            raise TargetError(f"runtime {runtime!r} timed out after {timeout_s:g} s (killed on the device)") from None

    def _execute(self, argv: list[str], env: dict[str, str], timeout_s: float) -> native.Outcome:
        """One tool process on the device, under toybox's `time -v` (its peak RSS), in its own
        shell's process group, killed with it on a timeout."""
        assignments = "".join(f"{shlex.quote(f'{k}={v}')} " for k, v in env.items())
        command = (f"cd {shlex.quote(FOLDER)} && echo $$ && exec time -v "
                   f"{'env ' + assignments if env else ''}{' '.join(shlex.quote(a) for a in argv)}")
        deadline = time.monotonic() + timeout_s
        with self.phone.stream(command, timeout=None) as stream:
            lines = stream.lines(deadline)
            pid = ""
            try:
                pid = next(lines, "").strip()
                stdout = "".join(lines)
            except (socket.timeout, adbutils.AdbTimeout):
                if pid.isdigit():
                    self.phone.shell(f"kill -9 -- -{pid}")
                raise TimeoutError from None
            if not pid.isdigit():
                raise native.ToolFailed(f"the tool did not start (exit code {stream.exit_code}): "
                                        f"{_last_line(stream.stderr)}")
            return native.Outcome.timed(stream.exit_code, stdout, stream.stderr.decode(errors="replace"))

    def _events(self, adapter: RunnerAdapter, stream: ShellStream, deadline: float,
                timeout_s: float, battery: BatterySampler | None) -> Iterator[protocol.Event]:
        """The runner's events; the battery window is the timed work: from the model being
        loaded (or the last warm-up request) to "measured"."""
        lines = stream.lines(deadline)
        pid, load_peak = None, None
        try:
            first = next(lines, "")
            if not first.strip().isdigit():  # the shell failed before starting the runner
                for _ in lines:
                    pass
                raise TargetError(f"runner did not start (exit code {stream.exit_code}): {_last_line(stream.stderr)}")
            pid = int(first)
            for line in lines:
                match self._parse(adapter, line, pid):
                    case None:
                        continue
                    case protocol.Error(error=error):
                        raise TargetError(f"runner failed: {error}")
                    case protocol.Measured():
                        if battery is not None:
                            battery.end_window()
                        yield self.memory(pid, load_peak)
                    case protocol.Done():
                        stream.close_stdin()
                    case protocol.Loaded() as loaded:
                        load_peak = self.load_peak(pid)
                        if battery is not None:
                            battery.start_window()
                        yield loaded
                    case event:
                        if battery is not None and isinstance(event, protocol.Request) and event.warmup:
                            battery.start_window()
                        yield event
        except (socket.timeout, adbutils.AdbTimeout):
            if pid is not None:
                self.phone.shell(f"kill -9 {pid}")
            raise TargetError(f"runner timed out after {timeout_s:g} s (killed on the device)") from None
        if stream.exit_code != 0:
            raise TargetError(f"runner exited with code {stream.exit_code}{_signal(stream.exit_code)}: "
                              f"{_last_line(stream.stderr)}")

    def _parse(self, adapter: RunnerAdapter, line: str, pid: int) -> protocol.Event | None:
        try:
            return adapter.parse(line)
        except protocol.ProtocolError as exc:
            self.phone.shell(f"kill -9 {pid}")
            raise TargetError(f"runner output garbled: {exc}") from None

    def load_peak(self, pid: int) -> int | None:
        """The runner's VmHWM when its model is loaded; then reset, so the next reading is the
        serving peak (`clear_refs` 5; None where the kernel refuses it)."""
        text = self.phone.check(f"cat /proc/{pid}/status")
        if self.phone.shell(f"echo 5 > /proc/{pid}/clear_refs").code != 0:
            return None
        return proc_kb_fields(text).get("VmHWM")

    def memory(self, pid: int, load_peak: int | None) -> protocol.Process:
        """Peak RSS (VmHWM) and PSS of the runner, from /proc on the device (kB there)."""
        values = proc_kb_fields(self.phone.check(f"cat /proc/{pid}/status /proc/{pid}/smaps_rollup"))
        if "VmHWM" not in values:
            raise TargetError(f"no VmHWM in /proc/{pid}/status on {self.phone.serial}")
        return protocol.Process(values["VmHWM"], values.get("Pss"), load_peak)

    def deploy(self, files: dict[str, Path], deadline: float | None = None) -> list[str]:
        """Push what changed since the last deployment (by sha256); returns the paths pushed."""
        manifest = self._manifest()
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

    def _manifest(self) -> dict[str, str]:
        return json.loads(self.phone.read(f"{FOLDER}/{MANIFEST}") or b"{}")

    def deployed_runtimes(self) -> dict[str, str]:
        """Runtime -> version of what this device can run now: the reference runner where the
        harness is installed, llama.cpp where its tools were deployed (their `--version`),
        Genie and ExecuTorch where their binaries were (they print their version only as
        they run, so it is in each result's `jobs` record)."""
        found = {}
        reference = self.phone.shell("python3 -c 'import harness; print(harness.__version__)'")
        if reference.code == 0:
            found["reference"] = f"harness {reference.stdout.strip()}"
        manifest = self._manifest()
        tools = sorted(path for path in manifest if path.startswith("llamacpp/bin/llama-"))
        if tools:
            answer = self.phone.shell(f"cd {shlex.quote(FOLDER)} && {shlex.quote(tools[0])} --version")
            found["llamacpp"] = llamacpp.version(answer.stdout + answer.stderr) or f"unknown ({tools[0]} --version failed)"
        for runtime, binary in (("genie", "genie/bin/genie-t2t-run"), ("executorch", "executorch/llama_main")):
            if binary in manifest:
                found[runtime] = "deployed (version: in each result)"
        return found

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
