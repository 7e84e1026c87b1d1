"""Fixtures of the benchmarks (`make bench`)."""

from __future__ import annotations

import pytest

from harness.emulators.adb import AdbServer
from harness.targets.registry import open_targets


@pytest.fixture(scope="module")
def phone(tmp_path_factory):
    """The adb target of one emulated Galaxy S24 behind its own loopback adb server."""
    server = AdbServer(["galaxy-s24"], tmp_path_factory.mktemp("devices")).start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANDROID_ADB_SERVER_PORT", str(server.port))
        patch.setenv("ADBUTILS_ADB_PATH", "/bin/false")
        (target,) = open_targets("adb")
        yield target
    server.close()
