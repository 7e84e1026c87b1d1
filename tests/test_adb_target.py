"""The adb target on emulated Galaxy phones: same counters as local, identity and device
state stored, faults stored as failed samples, `--resume` completes the run."""

from __future__ import annotations

import json
import shlex
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import harness, write_scenario
from harness.emulators.adb import AdbServer
from harness.emulators.adb.control import inject
from harness.errors import HarnessError
from harness.run.orchestrator import resolve_targets, resumable, resume_run
from harness.run.protocol import Job
from harness.spec.scenario import load_scenario
from harness.spec.variant import Variant
from harness.store import Store
from harness.targets.base import TargetError
from harness.targets.registry import open_targets
from harness.targets.adb.target import FOLDER, inside_folder
from harness.measure.host import has_cpufreq
from harness.targets.adb.device_state import BatterySampler, Hygiene, parse_state
from harness.targets.adb.runtimes import ReferenceRunner

S24, S25 = "emu-galaxy-s24", "emu-galaxy-s25"
FP16 = Variant(precision="fp16").as_dict()  # a whole variant: a job the runner could really serve
ONE_PROMPT = [{"id": "capital", "prompt": "What is the capital of France? Answer with one word.",
               "reference": "Paris"}]


pytestmark = pytest.mark.usefixtures("no_real_adb_server")  # conftest: adbutils never starts a real adb server


def target(serial: str):
    (found,) = open_targets(f"adb:{serial}")
    return found


# -- one scenario on the local target and two emulated phones, the S25 under faults ----------

FAULTS = [  # (fault armed on the S25 before an attempt, what its stored error says)
    ("drop-push", f"device {S25} lost: connection closed"),
    ("drop-run", f"device {S25} lost: connection closed"),
    ("oom:64M", "runner exited with code 137 (killed by SIGKILL"),
    ("full", f"device {S25}: push to {FOLDER}/job.json failed: write failed: No space left on device"),
]


@dataclass
class Story:
    first: subprocess.CompletedProcess  # `harness run` with the first fault armed
    attempts: list[tuple[str, str, list]]  # (fault, stored error, samples of the other targets after it)
    final: subprocess.CompletedProcess  # `harness run --resume`
    document: dict  # the results after the resume
    db: Path


@pytest.fixture(scope="module")
def story(server, tmp_path_factory) -> Story:
    """The scenario on local + both phones; the S25 fails under each fault in turn (first run,
    then in-process resumes), and a last `harness run --resume` completes it."""
    folder = tmp_path_factory.mktemp("two-phones")
    scenario = write_scenario(folder, prompts=ONE_PROMPT, variants={"precision": ["fp16"]},
                              baseline={"precision": "fp16"},
                              workload={"prompts": "prompts.jsonl", "max_new_tokens": 3, "repetitions": 1, "warmup": 0})
    db = folder / "r.sqlite"
    inject(server.port, S25, FAULTS[0][0])
    first = harness("run", str(scenario), "--target", "local", "--target", "adb", "--db", str(db),
                    "--report", str(folder / "first.html"))
    inject(server.port, S25, "clear")
    store = Store(db)
    run_id = store.run().run_id
    attempts = [(FAULTS[0][0], _error(store, run_id, S25), _others(store, run_id))]
    for fault, _ in FAULTS[1:]:
        inject(server.port, S25, fault)
        resume_run(store, run_id, *resumable(store, run_id))
        inject(server.port, S25, "clear")
        attempts.append((fault, _error(store, run_id, S25), _others(store, run_id)))
    final = harness("run", "--resume", run_id, "--db", str(db), "--json", str(folder / "final.json"),
                    "--report", str(folder / "final.html"))
    document = json.loads((folder / "final.json").read_text()) if final.returncode == 0 else {}
    return Story(first, attempts, final, document, db)


def _error(store: Store, run_id: str, serial: str) -> str | None:
    return next(r.error for r in store.results(run_id) if r.target_key == f"adb:{serial}")


def _others(store: Store, run_id: str) -> list:
    return [(r.target_key, s) for r in store.results(run_id) if r.target_key != f"adb:{S25}"
            for s in store.samples(run_id, r.variant_key, r.target_key)]


def test_first_run_stores_the_fault_and_measures_the_rest(story) -> None:
    assert story.first.returncode == 1, story.first.stderr[-3000:]  # a result failed
    fault, error, others = story.attempts[0]
    assert error.startswith("repetition 0: ") and FAULTS[0][1] in error
    assert {key for key, _ in others} == {"local", f"adb:{S24}"}
    assert {s.metric for _, s in others} >= {"e2e_ms", "peak_rss_bytes"}


@pytest.mark.parametrize("index", range(1, len(FAULTS)), ids=[f for f, _ in FAULTS[1:]])
def test_each_fault_is_a_clear_stored_error_and_loses_nothing(story, index: int) -> None:
    fault, error, others = story.attempts[index]
    assert fault == FAULTS[index][0]
    assert error.startswith("repetition 0: ") and FAULTS[index][1] in error, error
    assert others == story.attempts[0][2]  # the samples measured before are intact


def test_resume_completes_the_run(story) -> None:
    assert story.final.returncode == 0, story.final.stderr[-3000:]
    assert story.document["run_status"] == "ok"
    assert all(r["status"] == "ok" for r in story.document["results"])
    db = sqlite3.connect(story.db)
    per_target = db.execute("SELECT target_key, count(*) FROM samples WHERE metric='peak_rss_bytes' GROUP BY target_key")
    assert dict(per_target) == {"local": 1, f"adb:{S24}": 1, f"adb:{S25}": 1}  # nothing measured twice
    assert db.execute("SELECT count(*) FROM repetitions WHERE status='failed'").fetchone() == (0,)


def test_two_phones_give_the_local_targets_counters(story) -> None:
    results = {r["target"]["name"]: r for r in story.document["results"]}
    local = results["local"]
    for serial in (S24, S25):
        phone = results[serial]
        assert set(phone["metrics"]) == set(local["metrics"])
        assert {"peak_rss_bytes", "pss_bytes", "load_ms", "ttft_ms", "decode_tokens_per_s"} <= set(phone["metrics"])
        assert phone["outputs"] == local["outputs"]  # the same engine, greedy: the same tokens
        assert phone["metrics"]["peak_rss_bytes"]["median"] > phone["metrics"]["weights_bytes"]["median"]


def test_results_are_labelled_emulated_with_identity(story) -> None:
    results = {r["target"]["name"]: r for r in story.document["results"]}
    assert results["local"]["target"]["emulated"] is False
    s24, s25 = results[S24]["target"], results[S25]["target"]
    assert (s24["kind"], s24["model"], s24["soc"], s24["platform"], s24["sdk"]) == ("adb", "SM-S921U", "SM8650",
                                                                                    "pineapple", "34")
    assert (s25["model"], s25["soc"], s25["platform"]) == ("SM-S931U", "SM8750", "sun")
    assert s24["emulated"] is True and s25["emulated"] is True
    assert s24["fingerprint"].startswith("samsung/e1qsqw/e1q:14/")


def test_device_state_is_stored_with_each_repetition(story) -> None:
    results = {r["target"]["name"]: r for r in story.document["results"]}
    host = results["local"]["device_states"]
    assert [(s["repetition"], s["phase"]) for s in host] == [(0, "before"), (0, "after")]
    assert all(s["load_1m"] >= 0 and s["cpu_mhz"] for s in host)
    # this VM's kernel has no cpufreq: its /proc/cpuinfo clock is marked nominal, not taken for a reading
    assert {s["cpu_mhz_source"] for s in host} == {"cpufreq" if has_cpufreq() else "nominal"}
    assert host[1]["other_cpu_s"] >= 0 and host[1]["steal_s"] >= 0  # what shared the host while it ran
    for serial in (S24, S25):
        states = results[serial]["device_states"]
        assert [(s["repetition"], s["phase"]) for s in states] == [(0, "before"), (0, "after")]
        for state in states:
            assert state["thermal_status"] == 0
            assert state["temperatures_c"] == {"AP": 30.0, "BAT": 30.0, "SKIN": 30.0}
            assert state["plugged"] == "usb" and state["battery_level"] == 100
            # the emulated phone reports the host's cpufreq clocks, and none where the host has none
            assert bool(state["cpu_freq_khz"]) == has_cpufreq() and all(f > 0 for f in state["cpu_freq_khz"].values())
        assert any("charging" in w for w in states[0]["warnings"])  # on USB power: warned, no energy number
        assert "energy_j" not in results[serial]["metrics"]
    # the report shows every state next to the variant and target it stood behind
    report = (story.db.parent / "final.html").read_text()
    states = report[report.index("<h3>Target state per repetition</h3>"):report.index("<h3>Run</h3>")]
    assert states.count("<tr>") == 2 * 3  # before and after, for local and the two phones
    assert f"adb:{S24} (emulated)" in states and "other processes' CPU s" in states and "100 % · usb" in states


def test_adb_without_server_or_devices_is_bad_input(tmp_path, monkeypatch) -> None:
    scenario = str(write_scenario(tmp_path))
    empty = AdbServer([], tmp_path / "none").start()
    try:
        monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(empty.port))
        out = harness("run", scenario, "--target", "adb")
        assert out.returncode == 2 and out.stderr.strip().endswith("no device attached to the adb server "
                                                                   "(harness devices lists them)"), out.stderr
    finally:
        empty.close()
    out = harness("run", scenario, "--target", f"adb:{S24}")  # nothing listens there any more
    assert out.returncode == 2 and f"no adb server at 127.0.0.1:{empty.port}" in out.stderr, out.stderr


def test_devices_command_lists_identity(server) -> None:
    out = harness("devices")
    assert out.returncode == 0, out.stderr
    assert S24 in out.stdout and "SM-S921U" in out.stdout and "SM8750" in out.stdout


def test_devices_survives_a_device_lost_while_asked(server, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # no cell wrapped
    inject(server.port, S25, "drop-run:import harness")  # cut while it answers which runtimes it has
    out = harness("devices")
    inject(server.port, S25, "clear")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "could not be read" in out.stdout and S24 in out.stdout


def test_energy_is_sampled_during_the_window_only(server) -> None:
    """Current and voltage read from the device's sysfs while the window is open, on a monotonic clock."""
    inject(server.port, S24, "battery:none:400")  # discharging, 400 mA at 4.35 V: 1.74 W
    try:
        with BatterySampler(target(S24).phone, interval_s=0.05) as battery:
            time.sleep(0.3)  # before the window: not counted
            battery.start_window()
            time.sleep(1.0)
            battery.end_window()
            time.sleep(0.3)
        start, end = battery.window
        assert battery.energy_j() == pytest.approx(1.74 * (end - start), rel=1e-6)
        assert any(t < start for t, _ in battery.samples) and any(t > end for t, _ in battery.samples)
        inject(server.port, S24, "battery:none")  # no current_now: no power, no energy
        with BatterySampler(target(S24).phone, interval_s=0.05) as unknown:
            unknown.start_window()
            time.sleep(0.3)
            unknown.end_window()
        assert unknown.samples == [] and unknown.energy_j() is None
    finally:
        inject(server.port, S24, "clear")


def test_hung_runner_is_killed_at_its_time_limit(server) -> None:
    inject(server.port, S25, "hang")
    try:
        with pytest.raises(TargetError, match=r"^runner timed out after 2 s \(killed on the device\)$"):
            list(target(S25).run(Job("smollm2-135m-instruct", FP16, ONE_PROMPT, 2, 0), timeout_s=2))
    finally:
        inject(server.port, S25, "clear")
    phone = target(S25).phone
    runners = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done | grep -c '[h]arness.run.runner'"
    for _ in range(100):  # the device kills what its closed connection ran
        if phone.shell(runners).stdout.strip() == "0":
            break
        time.sleep(0.05)
    assert phone.shell(runners).stdout.strip() == "0"


def test_slow_link_past_the_time_limit_is_a_clear_error(server) -> None:
    run = target(S25).run(Job("smollm2-135m-instruct", FP16, ONE_PROMPT, 2, 0), timeout_s=1.5)
    assert next(run).phase == "before"  # the device state was read; now the link slows down
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
            list(phone.run(Job("smollm2-135m-instruct", FP16, ONE_PROMPT, 2, 0), timeout_s=10))
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
        list(targets[0].run(Job("smollm2-135m-instruct", FP16, ONE_PROMPT, 2, 0), timeout_s=10))
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
    job = Job("smollm2-135m-instruct", {**FP16, "adapters": ["../../escape"]}, ONE_PROMPT, 2, 0,
              adapters_dir=str(adapters))
    files = ReferenceRunner().files(job)
    assert list(files) == ["adapters/../../escape/adapter_config.json"]
    with pytest.raises(HarnessError, match="leaves the harness folder"):
        target(S25).deploy(files)


def test_forecast_tokens_are_deployed_and_the_job_names_the_device_copy(tmp_path) -> None:
    weights = tmp_path / "forecast" / "smollm2-135m-instruct.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"weights")
    job = Job("smollm2-135m-instruct", {**FP16, "decoding": "ds2d", "drafter": "forecast"}, ONE_PROMPT, 2, 0,
              forecast_file=str(weights))
    runner = ReferenceRunner()
    assert runner.files(job) == {"forecast/smollm2-135m-instruct.safetensors": weights}
    assert json.loads(runner.job_file(job))["forecast_file"] == "forecast/smollm2-135m-instruct.safetensors"


def test_runner_command_quotes_its_values() -> None:
    command = ReferenceRunner().command("job; touch /data/local/tmp/pwned")
    assert shlex.split(command) == ["python3", "-m", "harness.run.runner", "job; touch /data/local/tmp/pwned"]


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
    assert samsung.power_w == pytest.approx(0.412 * 3.912)


def test_only_temperature_types_are_temperatures() -> None:
    # Android's BCL entries (types 6, 7, 8: mV, mA, %) and type -1 (unknown) are not degrees
    bcl = THERMAL + ("\tTemperature{mValue=11900.0, mType=6, mName=vbat, mStatus=0}\n"
                     "\tTemperature{mValue=4500.0, mType=7, mName=ibat, mStatus=0}\n"
                     "\tTemperature{mValue=76.0, mType=8, mName=soc, mStatus=0}\n"
                     "\tTemperature{mValue=88.0, mType=-1, mName=odd, mStatus=0}\n"
                     "\tTemperature{mValue=39.0, mType=9, mName=NPU, mStatus=0}\n")
    state = parse_state(bcl.replace("Thermal Status: 2", "Thermal Status: 0"), 0.0)
    assert state.temperatures_c == {"AP": 41.2, "BAT": 33.5, "NPU": 39.0}
    assert not Hygiene().hot(state) and state.unknown == []


def test_a_device_that_reports_no_thermal_state_is_unknown_not_cool() -> None:
    silent = parse_state("", 0.0)  # dumpsys thermalservice failed or printed nothing
    assert silent.thermal_status is None and silent.temperatures_c == {} and silent.max_temp_c is None
    assert silent.unknown == ["thermal status", "temperatures"]
    naps = []
    state = Hygiene(cooldown_s=60).settle(lambda: silent, sleep=naps.append)
    assert naps == []  # nothing known to be hot: no cool-down wait...
    assert state.warnings == ["thermal status and temperatures unknown: the device did not report them, so it may be hot"]
    with pytest.raises(ValueError, match="^thermal status and temperatures unknown"):  # ...or a failure, when asked
        Hygiene(unknown="fail").settle(lambda: parse_state("", 0.0))
    status_only = parse_state(THERMAL.split("Current temperatures")[0], 0.0)
    assert status_only.thermal_status == 2 and status_only.unknown == ["temperatures"]


def test_hygiene_waits_for_the_device_to_cool() -> None:
    readings = iter([THERMAL, THERMAL, THERMAL.replace("Thermal Status: 2", "Thermal Status: 0")
                     .replace("41.2", "35.0")])
    naps = []
    state = Hygiene(cooldown_s=60, poll_s=5).settle(lambda: parse_state(next(readings), 0.0), sleep=naps.append)
    assert state.thermal_status == 0 and naps == [5, 5]
    assert not state.warnings
