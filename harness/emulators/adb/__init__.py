"""Emulated Galaxy devices behind a loopback adb server that real adb clients talk to.

No phone exists where the tests run, so `harness emulator serve` stands in for the adb
server a phone farm would have: it speaks the adb host, shell (v1 and v2) and sync
protocols, and each device runs commands for real in its own sandbox directory (its
processes are real host processes; `/proc/<pid>`, memory and CPU frequencies are read
from the host). Identity (`getprop`) is the real phones'; `ro.hil.emulated=1` tells the
harness to label every number from it emulated. Faults can be injected per device.
"""

from harness.emulators.adb.device import EmulatedDevice
from harness.emulators.adb.profiles import PROFILES
from harness.emulators.adb.server import AdbServer

__all__ = ["PROFILES", "AdbServer", "EmulatedDevice"]
