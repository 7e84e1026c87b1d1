"""Fault injection from outside: the emulator's `hil-fault` host service, over adb's framing."""

from __future__ import annotations

import adbutils


def inject(port: int, serial: str, spec: str, host: str = "127.0.0.1") -> None:
    """Apply `spec` (see `harness.emulators.adb.device.FAULTS`) to one emulated device."""
    with adbutils.AdbClient(host, port).make_connection(timeout=10) as connection:
        connection.send_command(f"host-serial:{serial}:hil-fault:{spec}")
        connection.check_okay()
