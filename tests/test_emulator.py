"""The emulated devices against real adb clients: the `adb` CLI bundled with adbutils."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import adbutils
import psutil
import pytest

from harness.emulators.adb import AdbServer
from harness.emulators.adb.control import inject


def adb_cli() -> str:
    bundled = Path(adbutils.__file__).parent / "binaries" / "adb"
    found = str(bundled) if bundled.is_file() else shutil.which("adb")
    assert found, "no adb CLI: the adbutils Linux wheel bundles one, or install Debian's adb"
    return found


pytestmark = pytest.mark.usefixtures("no_real_adb_server")  # conftest: adbutils never starts a real adb server


def adb(server: AdbServer, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([adb_cli(), "-H", "127.0.0.1", "-P", str(server.port), *args],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)


def test_devices_l_lists_both_phones_with_identity(server) -> None:
    out = adb(server, "devices", "-l")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()[1:]
    assert "emu-galaxy-s24\tdevice product:e1qsqw model:SM_S921U device:e1q transport_id:1" in lines
    assert any(line.startswith("emu-galaxy-s25\tdevice") and "model:SM_S931U" in line for line in lines)


def test_shell_keeps_exit_codes_and_output(server) -> None:
    out = adb(server, "-s", "emu-galaxy-s24", "shell", "echo out; echo err >&2; exit 7")
    assert out.returncode == 7
    assert out.stdout == "out\n" and out.stderr == "err\n"
    assert adb(server, "-s", "emu-galaxy-s24", "shell", "true").returncode == 0


def test_getprop_reports_the_real_phones(server) -> None:
    def prop(serial: str, name: str) -> str:
        return adb(server, "-s", serial, "shell", "getprop", name).stdout.strip()

    assert [prop("emu-galaxy-s24", p) for p in ("ro.product.model", "ro.soc.model", "ro.board.platform")] == [
        "SM-S921U", "SM8650", "pineapple"]
    assert [prop("emu-galaxy-s25", p) for p in ("ro.product.model", "ro.soc.model", "ro.board.platform")] == [
        "SM-S931U", "SM8750", "sun"]
    assert prop("emu-galaxy-s25", "ro.hil.emulated") == "1"
    listing = adb(server, "-s", "emu-galaxy-s24", "shell", "getprop").stdout
    assert "[ro.build.fingerprint]: [samsung/e1qsqw/e1q:14/" in listing


def test_push_and_pull_100_mb_keep_the_checksum(server, tmp_path) -> None:
    source = tmp_path / "blob.bin"
    source.write_bytes(os.urandom(100 * 1000 * 1000))
    assert adb(server, "-s", "emu-galaxy-s24", "push", str(source), "/data/local/tmp/blob.bin").returncode == 0
    back = tmp_path / "back.bin"
    assert adb(server, "-s", "emu-galaxy-s24", "pull", "/data/local/tmp/blob.bin", str(back)).returncode == 0
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
    # each device has its own storage
    assert adb(server, "-s", "emu-galaxy-s25", "shell", "ls /data/local/tmp/blob.bin").returncode != 0
    adb(server, "-s", "emu-galaxy-s24", "shell", "rm /data/local/tmp/blob.bin")


def test_pushes_stay_where_the_shell_user_may_write(server, tmp_path) -> None:
    source = tmp_path / "x.txt"
    source.write_text("x")
    for target in ("/etc/x.txt", "/data/local/tmp/../../../x.txt"):
        out = adb(server, "-s", "emu-galaxy-s24", "push", str(source), target)
        assert out.returncode != 0 and "Permission denied" in out.stderr


# Each process on the device and its command line (a phone's `ps -A -o ARGS`, from /proc).
PROCESSES = r"""for p in /proc/[0-9]*; do printf '%s ' "${p#/proc/}"; tr '\0' ' ' < "$p/cmdline"; echo; done"""


def test_proc_shows_only_the_devices_own_processes(server) -> None:
    out = adb(server, "-s", "emu-galaxy-s24", "shell", f"echo $$; {PROCESSES}; grep VmHWM /proc/$$/status")
    shell, *listing, vmhwm = out.stdout.splitlines()
    assert any(line.startswith(f"{shell} /bin/sh -c") for line in listing)  # the shell itself, by its device pid
    assert not any("pytest" in line for line in listing)  # the host's processes (this test's own) are not there
    assert vmhwm.startswith("VmHWM:")


def test_a_device_shell_is_an_unprivileged_user_that_leaves_the_host_untouched(server, tmp_path) -> None:
    """The issue's check: `adb shell 'id; touch FILE'` on an emulated phone."""
    device = server.devices["emu-galaxy-s24"]
    outside = [tmp_path / "host.txt", Path("/hil-root.txt"), Path("/etc/hil.txt"), device.root / "hil/x.txt",
               Path(__file__).parent / "from-device.txt", Path(sys.prefix) / "x.txt"]
    command = "id; " + "; ".join(f"touch {f}" for f in [*outside, "/data/local/tmp/../x.txt", "/data/local/tmp/ok.txt"])
    out = adb(server, "-s", "emu-galaxy-s24", "shell", command)
    assert out.stdout.splitlines()[0] == "uid=2000 gid=2000 groups=2000"  # Android's shell user, not root
    assert out.stderr.count("touch: cannot touch") == len(outside) + 1, out.stderr
    assert not [f for f in [*outside, device.root / "data/x.txt", Path("/data/x.txt")] if f.exists()]
    assert (device.root / "data/local/tmp/ok.txt").exists()  # the device's writable folder is written


def test_a_device_shell_cannot_read_host_files_or_reach_the_host_network(server, tmp_path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret\n")
    for path in (secret, Path.home() / ".bashrc", "/etc/passwd", "/etc/hostname"):
        out = adb(server, "-s", "emu-galaxy-s24", "shell", f"cat {path}")
        assert out.returncode != 0 and "No such file or directory" in out.stderr and not out.stdout
    probe = f"import socket; socket.create_connection(('127.0.0.1', {server.port}), timeout=5)"
    out = adb(server, "-s", "emu-galaxy-s24", "shell", f"python -c \"{probe}\"")
    assert out.returncode != 0 and "ConnectionRefusedError" in out.stderr  # not even the emulator's own port


def test_without_isolation_the_emulator_refuses_shells_unless_told_what_it_allows(tmp_path) -> None:
    command = [sys.executable, "-m", "harness.cli", "emulator", "serve", "--device", "galaxy-s24", "--port", "0"]
    no_bwrap = {**os.environ, "PATH": str(tmp_path)}  # a host without bubblewrap
    refused = subprocess.run(command, capture_output=True, text=True, env=no_bwrap, timeout=60)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().count("\n") == 0 and "--unconfined-shells" in refused.stderr
    assert "--unconfined-shells" in subprocess.run([*command[:5], "--help"], capture_output=True, text=True).stdout
    with _serving([*command, "--unconfined-shells"], env=no_bwrap) as port:
        out = subprocess.run([adb_cli(), "-H", "127.0.0.1", "-P", str(port), "shell", "id -u; ls /proc"],
                             capture_output=True, text=True, timeout=60)
    uid, *pids = out.stdout.split()
    assert uid == str(os.getuid()) and len(pids) == 1  # as this user; /proc: the device's own shell only


def test_dumpsys_in_android_format(server) -> None:
    text = adb(server, "-s", "emu-galaxy-s25", "shell",
               "dumpsys thermalservice; dumpsys battery; dumpsys meminfo $$").stdout
    assert "Thermal Status: 0" in text
    assert "Temperature{mValue=30.0, mType=0, mName=AP, mStatus=0}" in text
    assert "  USB powered: true" in text and "  level: 100" in text
    assert "** MEMINFO in pid " in text and "TOTAL PSS:" in text


def test_faults_are_injected_through_the_cli(server) -> None:
    fault = [sys.executable, "-m", "harness.cli", "emulator", "fault", "--port", str(server.port), "emu-galaxy-s25"]
    assert subprocess.run([*fault, "thermal:4:52.5"], capture_output=True).returncode == 0
    assert "Thermal Status: 4" in adb(server, "-s", "emu-galaxy-s25", "shell", "dumpsys thermalservice").stdout
    bad = subprocess.run([*fault, "melt"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown fault 'melt'" in bad.stderr and "Traceback" not in bad.stderr
    inject(server.port, "emu-galaxy-s25", "clear")
    inject(server.port, "emu-galaxy-s24", "full")
    out = adb(server, "-s", "emu-galaxy-s24", "push", __file__, "/data/local/tmp/x.py")
    assert out.returncode != 0 and "No space left on device" in out.stderr
    inject(server.port, "emu-galaxy-s24", "clear")


def test_serve_command_answers_adb_clients_on_loopback_only() -> None:
    command = [sys.executable, "-m", "harness.cli", "emulator", "serve", "--device", "galaxy-s24", "--port", "0"]
    with _serving(command) as port:
        assert [d.serial for d in adbutils.AdbClient("127.0.0.1", port).list()] == ["emu-galaxy-s24"]
        listening = [c for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN"]
        assert [c.laddr.ip for c in listening] == ["127.0.0.1"]
    help_text = " ".join(subprocess.run([*command[:5], "--help"], capture_output=True, text=True).stdout.split())
    assert "listens on 127.0.0.1 only: no other machine can reach it" in help_text


@contextlib.contextmanager
def _serving(command: list[str], env: dict[str, str] | None = None) -> Iterator[int]:
    """`harness emulator serve` running; the port it listens on."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = ""
        while "adb server on" not in line:
            line = process.stderr.readline()
            assert line, "emulator exited early"
        yield int(line.split("127.0.0.1:")[1].split()[0])
    finally:
        process.terminate()
        process.wait()
