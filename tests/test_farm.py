"""A device farm (issue 16): two hosts, each with its own adb server and two phones, run one
farm run into one PostgreSQL store with pytest-xdist (a worker per phone); one worker is
killed mid-run and `harness run --resume` completes the run. The stored run equals, in
content, the same scenario run sequentially into SQLite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import psutil
import pytest

from conftest import REPO, write_scenario
from harness.emulators.adb import AdbServer
from harness.store import Store

HOSTS = ("host-a", "host-b")
PHONES = ("galaxy-s24", "galaxy-s25")


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory, no_real_adb_server):
    """Two emulator servers, one per host, their phones named after the host."""
    root = tmp_path_factory.mktemp("farm")
    servers = {host: AdbServer(list(PHONES), root / host, name=host).start() for host in HOSTS}
    yield servers
    for server in servers.values():
        server.close()


def _on(host: str, server: AdbServer, *argv: str) -> subprocess.Popen:
    env = {**os.environ, "HARNESS_HOST": host, "ANDROID_ADB_SERVER_PORT": str(server.port)}
    return subprocess.Popen([sys.executable, "-m", *argv], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _harness(host: str, server: AdbServer, *args: str) -> subprocess.Popen:
    return _on(host, server, "harness.cli", *args)


def _targets(host: str, option: str = "--target") -> list[str]:
    return [arg for phone in PHONES for arg in (option, f"adb:{host}-{phone}")]


def _finished(process: subprocess.Popen) -> tuple[int, str]:
    out, err = process.communicate(timeout=900)
    return process.returncode, out + err


def _content(store: Store, run_id: str) -> dict:
    results = store.results(run_id)
    samples = store.run_samples(run_id)
    counts = Counter({key: len(values) for key, values in samples.items()})
    return {"results": sorted((r.variant_key, r.target_key, r.status, r.host) for r in results),
            "samples": counts, "completed": sorted(store.completed(run_id))}


def test_two_hosts_run_one_farm_run_on_xdist_into_postgres_and_a_killed_worker_is_resumed(
        farm, tmp_path, postgres_url) -> None:
    scenario = write_scenario(tmp_path / "scenarios", workload={"prompts": "prompts.jsonl", "max_new_tokens": 4,
                                                                "repetitions": 2, "warmup": 0})
    sqlite = tmp_path / "sequential.sqlite"
    for host in HOSTS:  # the reference: the same farm run, one device after another
        code, out = _finished(_harness(host, farm[host], "run", str(scenario), *_targets(host), "--db", str(sqlite),
                                       "--run-id", "farm-sequential"))
        assert code == 0, out[-3000:]

    run_id = "farm-tiny"  # --harness-run-id farm, scenario tiny
    hosts = {host: _on(host, farm[host], "pytest", str(scenario.parent), "-n", "2", "-p", "no:cacheprovider",
                       "--harness-db", postgres_url, "--harness-run-id", "farm", *_targets(host, "--harness-target"))
             for host in HOSTS}
    store = Store(postgres_url)
    deadline = time.monotonic() + 600
    while not [c for c in store.completed(run_id) if c[1].startswith("adb:host-b")]:
        assert hosts["host-b"].poll() is None and time.monotonic() < deadline, _finished(hosts["host-b"])[1]
        time.sleep(0.2)
    worker = psutil.Process(hosts["host-b"].pid).children()[0]  # an xdist worker of host b, mid-run
    worker.send_signal(signal.SIGKILL)
    code, out = _finished(hosts["host-a"])
    assert code == 0, out[-3000:]
    code, out = _finished(hosts["host-b"])
    assert code != 0 and "crashed" in out  # the killed worker's item fails; xdist replaced the worker

    code, out = _finished(_harness("host-b", farm["host-b"], "run", "--resume", run_id, "--db", postgres_url,
                                   "--parallel"))
    assert code == 0, out[-3000:]
    assert "left on adb:host-b-galaxy-s24, adb:host-b-galaxy-s25" in out  # host a's phones are host a's
    assert _content(store, run_id) == _content(Store(sqlite), "farm-sequential")
    assert {r.host for r in store.results(run_id)} == set(HOSTS)
