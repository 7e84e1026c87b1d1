"""The soak of issue 17's campaign: at least 100 runner processes through two emulated phones,
devices at once, with faults injected at random (seeded, bounded in time) and `--resume`
after each round, until the run completes: every sample measured is stored exactly once.
Its figures are the README's (the test checks that the README says them)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from conftest import REPO, write_scenario
from harness.emulators.adb import AdbServer
from harness.emulators.adb.device import DEFAULT_RUNNER
from harness.store import Store

SEED, REPETITIONS, ROUNDS = 2026, 25, 12
# Each kills the runner it hits, differently; one fault at a time per phone (oom stays armed
# until the next one replaces it).
FAULTS = ("drop-run", "oom:64M", "hang")
SOAK_S = 600  # the soak's bound in time; faults during its first half
# Measured against the baseline's output of the same repetition: a repetition that ran while
# its baseline's had failed on that phone has none (README, "Faults lose nothing").
AGAINST_BASELINE = {"agreement_with_baseline", "kld_vs_baseline"}


class Counted(AdbServer):
    """The emulator, counting the runner processes its phones start."""

    runners = 0

    def count(self) -> None:
        for device in self.devices.values():
            spawn = device.spawn

            def counting(command: str, merged: bool, spawn=spawn):
                if DEFAULT_RUNNER in command:
                    Counted.runners += 1
                return spawn(command, merged)

            device.spawn = counting


def _injector(server: AdbServer, stop: threading.Event, injected: list[str]) -> None:
    rng = random.Random(SEED)
    while not stop.wait(rng.uniform(3.0, 12.0)):
        serial = rng.choice(sorted(server.devices))
        fault = rng.choice(FAULTS)
        server.devices[serial].inject("clear")
        server.devices[serial].inject(fault)
        injected.append(f"{fault}@{serial}")


@pytest.fixture(scope="module")
def soak(tmp_path_factory, no_real_adb_server) -> dict:
    folder = tmp_path_factory.mktemp("soak")
    server = Counted(["galaxy-s24", "galaxy-s25"], folder / "devices", name="soak").start()
    server.count()
    scenario = write_scenario(folder, variants={"precision": ["fp32", "fp16"]}, targets=["adb"],
                              workload={"prompts": "prompts.jsonl", "max_new_tokens": 2, "warmup": 0,
                                        "repetitions": REPETITIONS, "timeout_s": 20})
    db = folder / "soak.sqlite"
    env = {**os.environ, "ANDROID_ADB_SERVER_PORT": str(server.port)}

    def harness(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "harness.cli", *args, "--db", str(db), "--parallel"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=SOAK_S)

    stop, injected = threading.Event(), []
    injector = threading.Thread(target=_injector, args=(server, stop, injected), daemon=True)
    started = time.monotonic()
    injector.start()
    rounds = [harness("run", str(scenario))]
    run_id = Store(db).run().run_id
    while len(rounds) < ROUNDS - 1 and _left(db, run_id) and time.monotonic() - started < SOAK_S / 2:
        rounds.append(harness("run", "--resume", run_id))
    stop.set()
    injector.join()
    for device in server.devices.values():
        device.inject("clear")
    if _left(db, run_id):  # the last round without faults: it must complete the run
        rounds.append(harness("run", "--resume", run_id))
    server.close()
    return {"db": db, "run_id": run_id, "rounds": rounds, "injected": injected, "runners": Counted.runners,
            "seconds": time.monotonic() - started}


def _left(db, run_id: str) -> int:
    store = Store(db)
    return 2 * 2 * REPETITIONS - len(store.completed(run_id))


def test_the_soak_ends_complete_with_every_sample_stored_once(soak) -> None:
    store = Store(soak["db"])
    assert soak["rounds"][-1].returncode == 0, soak["rounds"][-1].stderr[-3000:]
    assert _left(soak["db"], soak["run_id"]) == 0 and all(r.status == "ok" for r in store.results(soak["run_id"]))
    assert soak["runners"] >= 100 and soak["injected"]
    for (variant, target, metric), samples in store.run_samples(soak["run_id"]).items():
        per_repetition = Counter(s.repetition for s in samples)
        if metric not in AGAINST_BASELINE:
            assert sorted(per_repetition) == list(range(REPETITIONS)), (variant, target, metric)
        assert len(set(per_repetition.values())) == 1, (variant, target, metric, per_repetition)  # none twice


def test_the_readme_states_the_soaks_bounds(soak) -> None:
    """Which faults land where depends on timing; the README states what the test holds (and
    the figures of one run, which this prints)."""
    print(f"soak: {soak['runners']} runner processes through 2 emulated phones, {len(soak['injected'])} faults "
          f"injected ({Counter(f.split('@')[0] for f in soak['injected'])}), {len(soak['rounds'])} rounds, "
          f"{soak['seconds']:.0f} s, samples lost: 0")
    line = (f"at least 100 runner processes through 2 emulated phones, faults ({', '.join(FAULTS)}) injected at "
            f"random (seed {SEED}) for at most {SOAK_S // 2} s")
    assert line in " ".join((REPO / "README.md").read_text().split()), f"the README should say: {line}"
