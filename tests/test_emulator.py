"""The emulated devices against real adb clients: the `adb` CLI bundled with adbutils."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import adbutils
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


def test_proc_shows_only_the_devices_own_processes(server) -> None:
    out = adb(server, "-s", "emu-galaxy-s24", "shell", "ls /proc; grep VmHWM /proc/$$/status")
    pids = [line for line in out.stdout.splitlines() if line.isdigit()]
    assert len(pids) == 1  # the shell itself (the runner's pid is its shell's, by exec)
    assert out.stdout.splitlines()[-1].startswith("VmHWM:")


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


def test_serve_command_answers_adb_clients() -> None:
    process = subprocess.Popen([sys.executable, "-m", "harness.cli", "emulator", "serve", "--device", "galaxy-s24",
                                "--port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "adb server on" not in line:
            line = process.stderr.readline()
            assert line, "emulator exited early"
        port = int(line.split("127.0.0.1:")[1].split()[0])
        assert [d.serial for d in adbutils.AdbClient("127.0.0.1", port).list()] == ["emu-galaxy-s24"]
    finally:
        process.terminate()
        process.wait()
