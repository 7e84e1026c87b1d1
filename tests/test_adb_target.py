"""The adb target on emulated Galaxy phones: same counters as local, identity and device
state stored, faults stored as failed samples, `--resume` completes the run."""

from __future__ import annotations

import json
import os
import shlex
import sqlite3

import pytest

from conftest import harness, write_scenario
from harness.emulator import AdbServer
from harness.emulator.control import inject
from harness.errors import HarnessError
from harness.orchestrator import resolve_targets, resumable, resume_run, run_scenario
from harness.runner import Job
from harness.scenario import load_scenario
from harness.store import Store
from harness.targets import TargetError, open_targets
from harness.targets.adb import FOLDER, inside_folder
from harness.targets.android import Hygiene, energy_j, parse_state
from harness.targets.runners import ReferenceRunner

S24, S25 = "emu-galaxy-s24", "emu-galaxy-s25"
ONE_PROMPT = [{"id": "capital", "prompt": "What is the capital of France? Answer with one word.",
               "reference": "Paris"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = AdbServer(["galaxy-s24", "galaxy-s25"], tmp_path_factory.mktemp("devices")).start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANDROID_ADB_SERVER_PORT", str(server.port))
        patch.setenv("ADBUTILS_ADB_PATH", "/bin/false")  # never start a real adb server
        yield server
    server.close()


def target(serial: str):
    (found,) = open_targets(f"adb:{serial}")
    return found


# -- the scenario on two emulated phones and on the local target ------------------------------

@pytest.fixture(scope="module")
def both_targets(server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("two-phones")
    scenario = write_scenario(folder, prompts=ONE_PROMPT, variants={"precision": ["fp16"]},
                              baseline={"precision": "fp16"},
                              workload={"prompts": "prompts.jsonl", "max_new_tokens": 3, "repetitions": 1, "warmup": 0})
    out = folder / "results.json"
    process = harness("run", str(scenario), "--target", "local", "--target", "adb", "--db", str(folder / "r.sqlite"),
                      "--json", str(out), "--report", str(folder / "r.html"))
    assert process.returncode == 0, process.stderr[-3000:]
    return {r["target"]["name"]: r for r in json.loads(out.read_text())["results"]}


def test_two_phones_give_the_local_targets_counters(both_targets) -> None:
    local = both_targets["local"]
    for serial in (S24, S25):
        phone = both_targets[serial]
        assert phone["status"] == "ok"
        assert set(phone["metrics"]) == set(local["metrics"])
        assert {"peak_rss_bytes", "pss_bytes", "load_ms", "ttft_ms", "decode_tokens_per_s"} <= set(phone["metrics"])
        assert phone["outputs"] == local["outputs"]  # the same engine, greedy: the same tokens
        assert phone["metrics"]["peak_rss_bytes"]["median"] > phone["metrics"]["weights_bytes"]["median"]


def test_results_are_labelled_emulated_with_identity(both_targets) -> None:
    assert both_targets["local"]["target"]["emulated"] is False
    s24, s25 = both_targets[S24]["target"], both_targets[S25]["target"]
    assert (s24["kind"], s24["model"], s24["soc"], s24["platform"], s24["sdk"]) == ("adb", "SM-S921U", "SM8650",
                                                                                    "pineapple", "34")
    assert (s25["model"], s25["soc"], s25["platform"]) == ("SM-S931U", "SM8750", "sun")
    assert s24["emulated"] is True and s25["emulated"] is True
    assert s24["fingerprint"].startswith("samsung/e1qsqw/e1q:14/")


def test_device_state_is_stored_with_each_repetition(both_targets) -> None:
    assert "device_states" not in both_targets["local"]
    states = both_targets[S24]["device_states"]
    assert [(s["repetition"], s["phase"]) for s in states] == [(0, "before"), (0, "after")]
    for state in states:
        assert state["thermal_status"] == 0
        assert state["temperatures_c"] == {"AP": 30.0, "BAT": 30.0, "SKIN": 30.0}
        assert state["plugged"] == "usb" and state["battery_level"] == 100
        assert state["cpu_freq_khz"] and all(f > 0 for f in state["cpu_freq_khz"].values())
    assert any("charging" in w for w in states[0]["warnings"])  # on USB power: warned, no energy number
    assert "energy_j" not in both_targets[S24]["metrics"]


def test_devices_command_lists_identity(server) -> None:
    out = harness("devices")
    assert out.returncode == 0, out.stderr
    assert S24 in out.stdout and "SM-S921U" in out.stdout and "SM8750" in out.stdout


# -- faults: each stores a failed repetition, keeps earlier samples, and --resume completes ----

CHAIN = [  # (fault armed while a repetition runs, error of the next repetition)
    ("drop-push", f"device {S24} lost: connection closed"),
    ("drop-run", f"device {S24} lost: connection closed"),
    ("hang", "runner timed out after 20 s (killed on the device)"),
    ("oom:64M", "runner exited with code 137 (killed by SIGKILL"),
    ("full", "No space left on device"),
]


@pytest.fixture(scope="module")
def chain(server, tmp_path_factory):
    """One run of len(CHAIN) + 1 repetitions on the S24; each test step arms the next fault."""
    folder = tmp_path_factory.mktemp("faults")
    path = write_scenario(folder, prompts=ONE_PROMPT, variants={"precision": ["fp16"]}, baseline={"precision": "fp16"},
                          targets=[f"adb:{S24}"],
                          workload={"prompts": "prompts.jsonl", "max_new_tokens": 2, "repetitions": len(CHAIN) + 1,
                                    "warmup": 0, "timeout_s": 20})
    return {"scenario": load_scenario(path), "store": Store(folder / "r.sqlite"), "db": folder / "r.sqlite"}


def _arm_once(server, fault: str):
    armed = []

    def step(_: str) -> None:
        if not armed:  # while this repetition runs: the fault hits the next one
            inject(server.port, S24, fault)
            armed.append(fault)
    return step


@pytest.mark.parametrize("index", range(len(CHAIN)), ids=[fault for fault, _ in CHAIN])
def test_fault_is_stored_and_resume_goes_on(server, chain, index: int) -> None:
    fault, error = CHAIN[index]
    store = chain["store"]
    if index == 0:
        chain["run_id"] = run_scenario(chain["scenario"], [target(S24)], store, on_step=_arm_once(server, fault))
    else:
        resume_run(store, chain["run_id"], *resumable(store, chain["run_id"]), on_step=_arm_once(server, fault))
    inject(server.port, S24, "clear")
    run_id = chain["run_id"]
    (result,) = store.results(run_id)
    assert result.status == "failed"
    assert result.error.startswith(f"repetition {index + 1}: ") and error in result.error, result.error
    assert store.run(run_id).status == "failed"
    repetitions = [s.repetition for s in store.samples(run_id, result.variant_key, result.target_key)
                   if s.metric == "e2e_ms"]
    assert sorted(set(repetitions)) == list(range(index + 1))  # every earlier repetition intact, once each
    assert len(repetitions) == index + 1


def test_resume_from_the_cli_completes_the_run(server, chain) -> None:
    out = harness("run", "--resume", chain["run_id"], "--db", str(chain["db"]), "--report", str(chain["db"]) + ".html")
    assert out.returncode == 0, out.stderr[-3000:]
    db = sqlite3.connect(chain["db"])
    assert db.execute("SELECT status FROM runs").fetchone() == ("ok",)
    counts = db.execute("SELECT repetition, count(*) FROM samples WHERE metric='peak_rss_bytes' GROUP BY repetition")
    assert dict(counts) == {r: 1 for r in range(len(CHAIN) + 1)}
    failures = [e for (e,) in db.execute("SELECT error FROM repetitions WHERE status='failed'")]
    assert failures == []  # each failed attempt was replaced by the repetition that completed


def test_slow_link_past_the_time_limit_is_a_clear_error(server) -> None:
    run = target(S25).run(Job("smollm2-135m-instruct", {"precision": "fp16"}, ONE_PROMPT, 2, 0), timeout_s=1.5)
    assert next(run)["phase"] == "before"  # the device state was read; now the link slows down
    inject(server.port, S25, "slow:50")  # 50 bytes/s: the job file alone takes longer than the limit
    try:
        with pytest.raises(TargetError, match=f"^device {S25} lost: no answer within the time limit$"):
            list(run)
    finally:
        inject(server.port, S25, "clear")


def test_hot_device_fails_after_its_cool_down(server) -> None:
    phone = target(S25)
    phone.hygiene = Hygiene(cooldown_s=0.3, poll_s=0.1)
    inject(server.port, S25, "thermal:3:48")
    try:
        with pytest.raises(TargetError, match=r"still hot after 0.3 s cool-down: thermal status 3 \(severe\)"):
            list(phone.run(Job("smollm2-135m-instruct", {"precision": "fp16"}, ONE_PROMPT, 2, 0), timeout_s=10))
    finally:
        inject(server.port, S25, "clear")


def test_scenario_device_rules_reach_the_adb_targets(server, tmp_path) -> None:
    rules = {"max_thermal_status": 2, "max_temp_c": 40.0, "cooldown_s": 0, "charging": "fail"}
    scenario = load_scenario(write_scenario(tmp_path, targets=["adb"], device=rules))
    targets = resolve_targets(scenario)
    assert len(targets) == 2
    assert all((t.hygiene.max_thermal_status, t.hygiene.max_temp_c, t.hygiene.cooldown_s, t.hygiene.charging)
               == (2, 40.0, 0, "fail") for t in targets)
    with pytest.raises(TargetError, match=r"^device is charging \(usb\)"):  # the emulated phones are on USB
        list(targets[0].run(Job("smollm2-135m-instruct", {"precision": "fp16"}, ONE_PROMPT, 2, 0), timeout_s=10))
    bad = harness("run", str(write_scenario(tmp_path / "bad", device={"max_thermal_status": 9})))
    assert bad.returncode == 2 and "device.max_thermal_status" in bad.stderr and "Traceback" not in bad.stderr


# -- deployment and quoting -----------------------------------------------------------------

def test_deploy_pushes_only_what_changed(server, tmp_path) -> None:
    phone = target(S25)
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"1" * 1000)
    odd = tmp_path / "o.txt"
    odd.write_text("x")
    files = {"adapters/a/w.bin": weights, "adapters/$(touch pwned)/o.txt": odd}
    assert phone.deploy(files) == list(files)
    assert phone.deploy(files) == []
    weights.write_bytes(b"2" * 1000)
    assert phone.deploy(files) == ["adapters/a/w.bin"]
    listing = phone.phone.check(f"ls {shlex.quote(FOLDER)}/adapters; ls /data/local/tmp")
    assert "$(touch pwned)" in listing and "pwned\n" not in listing.replace("$(touch pwned)", "")
    phone.cleanup()
    assert phone.phone.shell(f"ls {FOLDER}").code != 0


def test_pushes_cannot_leave_the_harness_folder() -> None:
    assert inside_folder("adapters/a/../b/x") == f"{FOLDER}/adapters/b/x"
    for bad in ("../x", "adapters/../../x", "/data/local/tmp/x", "."):
        with pytest.raises(HarnessError, match="leaves the harness folder"):
            inside_folder(bad)


def test_adapter_names_cannot_escape_through_deployment(server, tmp_path) -> None:
    adapters = tmp_path / "a" / "adapters"
    adapters.mkdir(parents=True)
    (tmp_path / "escape").mkdir()
    (tmp_path / "escape" / "adapter_config.json").write_text("{}")
    job = Job("smollm2-135m-instruct", {"precision": "fp16", "adapters": ["../../escape"]}, ONE_PROMPT, 2, 0,
              adapters_dir=str(adapters))
    files = ReferenceRunner().files(job)
    assert list(files) == ["adapters/../../escape/adapter_config.json"]
    with pytest.raises(HarnessError, match="leaves the harness folder"):
        target(S25).deploy(files)


def test_runner_command_quotes_its_values() -> None:
    command = ReferenceRunner().command("job; touch /data/local/tmp/pwned")
    assert shlex.split(command) == ["python3", "-m", "harness.runner", "job; touch /data/local/tmp/pwned"]


# -- device state parsing (real formats) ----------------------------------------------------

THERMAL = """Thermal Status: 2
Cached temperatures:
\tTemperature{mValue=99.0, mType=0, mName=AP, mStatus=0}
Current temperatures from HAL:
\tTemperature{mValue=41.2, mType=0, mName=AP, mStatus=2}
\tTemperature{mValue=33.5, mType=2, mName=BAT, mStatus=0}
"""
BATTERY = """Current Battery Service state:
  AC powered: false
  USB powered: false
  Wireless powered: false
  status: 3
  level: 76
  voltage: 3912
  temperature: 312
"""


def test_state_parses_dumpsys_and_sysfs_units() -> None:
    mark = "@@hil@@\n"
    text = THERMAL + mark + BATTERY + mark + "policy0 1785600\npolicy7 3302400\n" + mark + \
        "  mWakefulness=Asleep\n" + mark + "-412000\n3912000\n"
    state = parse_state(text, time_s=100.0)
    assert state.thermal_status == 2 and state.temperatures_c == {"AP": 41.2, "BAT": 33.5}
    assert (state.battery_level, state.battery_temp_c, state.plugged, state.screen) == (76, 31.2, "none", "Asleep")
    assert (state.current_ma, state.voltage_mv) == (-412.0, 3912.0)  # uA, uV -> mA, mV
    assert state.cpu_freq_khz == {"policy0": 1785600, "policy7": 3302400}
    samsung = parse_state(text.replace("-412000\n3912000", "-412\n3912"), time_s=110.0)  # mA, mV as reported
    assert (samsung.current_ma, samsung.voltage_mv) == (-412.0, 3912.0)
    assert energy_j(state, samsung) == pytest.approx(0.412 * 3.912 * 10)


def test_hygiene_waits_for_the_device_to_cool() -> None:
    readings = iter([THERMAL, THERMAL, THERMAL.replace("Thermal Status: 2", "Thermal Status: 0")
                     .replace("41.2", "35.0")])
    naps = []
    state = Hygiene(cooldown_s=60, poll_s=5).settle(lambda: parse_state(next(readings), 0.0), sleep=naps.append)
    assert state.thermal_status == 0 and naps == [5, 5]
    assert not state.warnings
