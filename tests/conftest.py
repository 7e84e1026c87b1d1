"""Shared fixtures: scenario files written on the fly; real smoke and compare runs, once per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from harness.analysis.results import build_results
from harness.store import Store

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["pytester"]


@pytest.hookimpl(tryfirst=True)  # before `-m` reads the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `alone` the tests that judge the compare runs' measured timings.

    `make test` runs the rest in two workers (`-n 2 --dist loadfile -m "not alone"`: a file's
    tests share a worker, so its module fixtures, and smoke_run, whose tests are all in
    test_end_to_end.py, are made once), then the `alone` ones on an otherwise quiet machine:
    the A/A verdicts and the slowed run's regression are timing comparisons that the other
    worker's load would skew.
    """
    for item in items:
        if "compare_runs" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.alone)


def harness(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run the harness CLI in a child process, as a user would."""
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True)


def multilingual_samples(path: Path = REPO / "tests" / "data" / "multilingual.txt") -> dict[str, str]:
    """The tokenizer test texts: '### name' starts a sample; its text is the lines up to the next header."""
    samples: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").removesuffix("\n").split("\n"):
        if line.startswith("### "):
            samples[line[4:]] = []
        elif samples:
            samples[next(reversed(samples))].append(line)
    return {name: "\n".join(lines) for name, lines in samples.items()}


PROMPTS = [
    {"id": "capital", "prompt": "What is the capital of France? Answer with one word.",
     "reference": ["Paris", "The capital of France is Paris"]},
]


def write_scenario(folder: Path, prompts: list[dict] | None = None, **fields) -> Path:
    """A small valid scenario in `folder`, with `fields` replacing or adding top-level keys."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompts.jsonl").write_text("\n".join(json.dumps(p) for p in prompts or PROMPTS) + "\n")
    scenario = {
        "name": "tiny",
        "variants": {"precision": ["fp32", "fp16"]},
        "baseline": {"precision": "fp32"},
        "workload": {"prompts": "prompts.jsonl", "max_new_tokens": 4, "repetitions": 1, "warmup": 0},
    }
    scenario.update(fields)
    path = folder / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))
    return path


@dataclass(frozen=True)
class SmokeRun:
    process: subprocess.CompletedProcess
    db: Path
    json: Path
    html: Path

    @property
    def document(self) -> dict:
        return json.loads(self.json.read_text())


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> SmokeRun:
    """`harness run scenarios/smoke.yaml` for real on the local target, once per session."""
    out = tmp_path_factory.mktemp("smoke")
    run = SmokeRun(None, out / "results.sqlite", out / "smoke.json", out / "smoke.html")  # type: ignore[arg-type]
    process = harness("run", "scenarios/smoke.yaml", "--db", str(run.db), "--json", str(run.json),
                      "--report", str(run.html))
    return SmokeRun(process, run.db, run.json, run.html)


# The slowed run's delay per decode step, as a share of the quiet run's time per token: 15 %,
# or 2.5x the decode noise `harness calibrate` measured when that is larger. A change must
# clear the floor after the machine's own drift between runs, which can be as large as the
# floor: on this 2-core VM, whose hypervisor steals time, A/A runs differ by up to ~15 %.
SLOWDOWN, SLOWDOWN_PER_NOISE = 0.15, 2.5
# Two prompts of the same token length that both run to max_new_tokens: per-request counters
# then have one mode, not one per prompt, and their medians are stable between runs.
TINY_PROMPTS = [
    {"id": "count", "prompt": "Count from one to twenty, in words."},
    {"id": "days", "prompt": "Name the days of the week, in order."},
]
TINY = {
    "name": "tiny-compare",
    "variants": {"precision": ["fp16"]},
    "baseline": {"precision": "fp16"},
    # 6 processes a run: two runs fully apart give Mann-Whitney p 2/924, which stays below the
    # false discovery level among the ~15 metrics judged. The floor is the default 5 %.
    "workload": {"prompts": "prompts.jsonl", "max_new_tokens": 6, "repetitions": 6, "warmup": 1},
}


@dataclass(frozen=True)
class CompareRuns:
    db: Path
    first: dict  # the three A/A runs of `harness calibrate`, whose noise is stored
    second: dict
    third: dict
    fourth: dict  # a plain run after them: A/A against `third`, out of the calibration's sample
    slowed: dict  # the run with the delay knob, judged against `fourth` (last good)
    loaded: dict  # a run with a CPU-bound process on one core throughout, in its own store
    delay_ms: float
    calibrate: subprocess.CompletedProcess
    pytest: subprocess.CompletedProcess
    junit: Path


@pytest.fixture(scope="session")
def compare_runs(tmp_path_factory: pytest.TempPathFactory) -> CompareRuns:
    """Six real runs of a tiny scenario, once per session: `harness calibrate` (three A/A
    runs, their noise stored), a fourth plain run, then `pytest` on the scenario with the
    delay knob (see SLOWDOWN) and `--harness-against last-good` (the regression run, with
    JUnit XML); and, in a store of its own so history and last-good never see it, a run
    while another process keeps one core busy."""
    out = tmp_path_factory.mktemp("compare")
    scenario = write_scenario(out / "scenarios", TINY_PROMPTS, **TINY)
    db, junit = out / "results.sqlite", out / "junit.xml"
    calibrate = harness("calibrate", str(scenario), "--db", str(db), "--runs", "3")
    assert calibrate.returncode == 0, calibrate.stderr[-2000:]
    plain = harness("run", str(scenario), "--db", str(db))
    assert plain.returncode == 0, plain.stderr[-2000:]
    store = Store(db)
    quiet = build_results(store, store.runs("tiny-compare")[-1].run_id)["results"][0]["metrics"]
    noise = store.noise("tiny-compare").get(("local", "decode_tokens_per_s"), 0.0)
    delay_ms = round(max(SLOWDOWN, SLOWDOWN_PER_NOISE * noise) * 1e3 / quiet["decode_tokens_per_s"]["estimate"], 1)
    env = {**os.environ, "HARNESS_TEST_DELAY_MS_PER_TOKEN": str(delay_ms)}
    plugin = subprocess.run([sys.executable, "-m", "pytest", str(scenario), "-p", "no:cacheprovider", "-q",
                             "--harness-db", str(db), "--harness-against", "last-good", "--junitxml", str(junit)],
                            cwd=out, env=env, capture_output=True, text=True)
    first, second, third, fourth, slowed = (build_results(store, r.run_id) for r in store.runs("tiny-compare"))
    store.close()
    loaded_db = out / "loaded.sqlite"
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        done = harness("run", str(scenario), "--db", str(loaded_db))
    finally:
        hog.kill()
        hog.wait()
    assert done.returncode == 0, done.stderr[-2000:]
    loaded_store = Store(loaded_db)
    loaded = build_results(loaded_store)
    loaded_store.close()
    return CompareRuns(db, first, second, third, fourth, slowed, loaded, delay_ms, calibrate, plugin, junit)


# The synthetic store's runs: from STEP_RUN on, fp32-s1-greedy decodes 40 % slower and the
# second variant's peak RSS is 20 % higher
WIDE_RUNS, STEP_RUN = 100, 70
WIDE_SCENARIO = """\
name: wide
variants:
  precision: [fp32, fp16, int4]
  streams: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
  include: [{precision: fp16, decoding: ds2d}, {precision: int4, decoding: ds2d}]
baseline: {precision: fp16, streams: 1, decoding: greedy}
workload: {prompts: prompts.jsonl}
"""


@pytest.fixture(scope="session")
def wide_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store shaped like 100 nightly runs of 50 variants, for the report's and history's scale.

    The numbers are drawn from a seeded generator: this tests layout and the step rule,
    not the model (real runs are what the other fixtures make).
    """
    import numpy as np

    from harness.spec.scenario import ScenarioFile
    from harness.store import Sample

    path = tmp_path_factory.mktemp("wide") / "results.sqlite"
    store = Store(path)
    store._db.execute("PRAGMA synchronous=OFF")  # 10 000 commits: no need to reach the disk for each
    variants = ScenarioFile.model_validate(yaml.safe_load(WIDE_SCENARIO)).variants.expand()
    target = {"kind": "local", "name": "local", "serial": "ci", "model": "cpu", "soc": "x86_64", "emulated": False}
    prompts = [{"id": "q1", "prompt": "?", "kind": "qa"}, {"id": "q2", "prompt": "?", "kind": "open"}]
    rng = np.random.default_rng(4)
    for run in range(WIDE_RUNS):
        run_id = store.begin_run("wide", "wide.yaml", "0" * 64, WIDE_SCENARIO, prompts, "0.1.0", None,
                                 {"hostname": "ci"})
        for number, variant in enumerate(variants):
            store.add_result(run_id, variant.key, "local", variant.as_dict(), target)
            slow = 0.6 if number == 0 and run >= STEP_RUN else 1.0
            bigger = 1.2 if number == 1 and run >= STEP_RUN else 1.0  # a process-level step
            samples = [Sample("weights_bytes", 2.7e8, rep, None) for rep in range(3)]
            samples += [Sample("peak_rss_bytes", 6e8 * bigger * (1 + rng.normal(0, 0.002)), rep, None) for rep in range(3)]
            for rep in range(3):
                for prompt in prompts:
                    samples.append(Sample("decode_tokens_per_s", 40 * slow * (1 + rng.normal(0, 0.02)), rep, prompt["id"]))
                    samples.append(Sample("ttft_ms", 50 * (1 + rng.normal(0, 0.02)), rep, prompt["id"]))
            store.add_samples(run_id, variant.key, "local", samples)
            if run == WIDE_RUNS - 1:
                for prompt in prompts:
                    store.add_output(run_id, variant.key, "local", 0, prompt["id"], None, "<b>text</b>", [1, 2])
        store.end_run(run_id, "ok")
    store.close()
    return path


@pytest.fixture(scope="module")
def no_real_adb_server():
    """adbutils starts an adb server when it cannot connect: never in tests."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADBUTILS_ADB_PATH", "/bin/false")
        yield


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, no_real_adb_server):
    """Emulated Galaxy S24 and S25 behind a loopback adb server, the one adbutils talks to."""
    from harness.emulators.adb import AdbServer

    server = AdbServer(["galaxy-s24", "galaxy-s25"], tmp_path_factory.mktemp("devices")).start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANDROID_ADB_SERVER_PORT", str(server.port))
        yield server
    server.close()


POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL 15 cluster on a free loopback port, trusting local connections;
    its URL names an empty database. initdb and postgres refuse to run as root: as root (CI)
    they run as the `postgres` system user the Debian package makes, in a folder it owns."""
    import shutil
    import socket
    import tempfile

    if not (POSTGRES_BIN / "postgres").is_file():
        pytest.fail(f"PostgreSQL 15 is not installed ({POSTGRES_BIN / 'postgres'} is missing): "
                    "`make test` installs it (apt-get install postgresql)")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="harness-postgres-"))  # in /tmp: not under root's 0700 pytest folder
    if as_user:
        shutil.chown(folder, "postgres", "postgres")

    def pg(tool: str, *args: str) -> None:
        done = subprocess.run([*as_user, str(POSTGRES_BIN / tool), *args], cwd=folder, capture_output=True, text=True)
        assert done.returncode == 0, f"{tool} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}"

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    data = str(folder / "data")
    pg("initdb", "-D", data, "-U", "harness", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync")
    pg("pg_ctl", "-D", data, "-l", str(folder / "log"), "-w", "-o",
       f"-h 127.0.0.1 -p {port} -k {folder} -c max_connections=100", "start")
    try:
        pg("createdb", "-h", "127.0.0.1", "-p", port, "-U", "harness", "results")
        yield f"postgresql://harness@127.0.0.1:{port}/results"
    finally:
        pg("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")  # a throwaway: no shutdown checkpoint
        shutil.rmtree(folder, ignore_errors=True)
