"""The PostgreSQL store against a real server (the session's throwaway cluster): what SQLite
stores it stores, a farm's hosts share run ids, and concurrent writers lose no sample."""

from __future__ import annotations

import dataclasses
import multiprocessing
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from test_store import location, new_database  # noqa: F401 (location: the fixture, both backends)

from harness.errors import HarnessError
from harness.store import Sample, Store, existing_store

PROMPTS = [{"id": "p1", "prompt": "?"}, {"id": "p2", "prompt": "?"}]
WRITERS, BATCHES, BATCH = 8, 25, 4  # per writer: BATCHES add_samples calls of BATCH samples each


def write_sequence(store: Store) -> None:
    """Every kind of write, in the order a run, a resume and a calibration make them."""
    for run_id in ("r1", "r2"):
        store.begin_run("s", "s.yaml", "0" * 64, "name: s", PROMPTS, "0.1", "abc", {"cpu": "x"}, run_id=run_id)
        for variant in ("fp32", "int4"):
            store.add_result(run_id, variant, "local", {"precision": variant}, {"kind": "local", "serial": "ci"})
            for rep in range(2):
                store.add_device_state(run_id, variant, "local", rep, "before", {"temp_c": 30.5 + rep})
                store.add_job(run_id, variant, "local", rep, {"kind": "profile", "job_id": f"j{rep}"})
                store.add_samples(run_id, variant, "local", [Sample("weights_bytes", 2.7e8, rep, None)]
                                  + [Sample("ttft_ms", 1 / 3 + rep, rep, p["id"]) for p in PROMPTS])
                store.add_samples(run_id, variant, "local", [Sample("ttft_ms", 99.0, rep, "p1")], warmup=True)
                store.add_output(run_id, variant, "local", rep, "p1", None, "first try", [1, 2])
                store.add_output(run_id, variant, "local", rep, "p1", None, "Paris", [3])  # replaces it
                store.add_output(run_id, variant, "local", rep, "p1", "fr", "Paris", [3, 4])
                store.end_repetition(run_id, variant, "local", rep, "timed out" if rep else None)
        store.fail_result(run_id, "int4", "local", "runner timed out")
        store.reopen(run_id, "int4", "local", 1)
        store.end_repetition(run_id, "int4", "local", 1)  # the resumed attempt replaces the failed one
        store.end_run(run_id, "ok")
    store.set_noise("s", "r1", "r2", {("local", "ttft_ms"): 0.1, ("local", "weights_bytes"): 0.0})
    store.set_noise("s", "r1", "r2", {("local", "ttft_ms"): 0.05})
    store.record_comparison("r2", "r1", 0)
    store.record_comparison("r2", "r1", 2)


def contents(store: Store) -> dict:
    """All a store says, through its public reads, with the clock's readings left out."""
    runs = [dataclasses.replace(r, started_at=0.0, ended_at=r.ended_at and 1.0) for r in store.runs()]
    keys = [(run.run_id, r.variant_key, r.target_key) for run in runs for r in store.results(run.run_id)]
    return {
        "runs": runs, "latest": store.run().run_id, "results": {run.run_id: store.results(run.run_id) for run in runs},
        "samples": {key: store.samples(*key) for key in keys}, "outputs": {key: store.outputs(*key) for key in keys},
        "run_samples": {run.run_id: store.run_samples(run.run_id) for run in runs},
        "ttft": store.run_samples("r1", ("ttft_ms",)), "jobs": {key: store.jobs(*key) for key in keys},
        "device_states": {key: store.device_states(*key) for key in keys},
        "completed": {run.run_id: store.completed(run.run_id) for run in runs},
        "noise": store.noise("s"), "regressed": (store.regressed("r1"), store.regressed("r2")),
    }


def test_sqlite_and_postgres_store_the_same(tmp_path, postgres_url, monkeypatch) -> None:
    monkeypatch.setenv("HARNESS_HOST", "bench-1")
    stores = [Store(tmp_path / "r.sqlite"), Store(new_database(postgres_url))]
    for store in stores:
        write_sequence(store)
    sqlite, postgres = (contents(store) for store in stores)
    assert postgres == sqlite
    assert {r.host for results in sqlite["results"].values() for r in results} == {"bench-1"}
    assert sqlite["samples"]["r1", "fp32", "local"][1].value == 1 / 3  # a double, not PostgreSQL's 4-byte REAL
    assert [(o["repetition"], o["text"]) for o in sqlite["outputs"]["r1", "int4", "local"]] == [
        (0, "Paris"), (0, "Paris")]  # replaced; repetition 1's dropped by reopen
    assert sqlite["completed"]["r1"] == {("fp32", "local", 0), ("int4", "local", 0), ("int4", "local", 1)}
    assert sqlite["noise"] == {("local", "ttft_ms"): 0.05, ("local", "weights_bytes"): 0.0}  # per key
    assert sqlite["regressed"] == (False, True)


def test_a_run_id_is_joined_by_a_second_host(location, monkeypatch) -> None:
    monkeypatch.setenv("HARNESS_HOST", "host-a")
    first = Store(location)
    monkeypatch.setenv("HARNESS_HOST", "host-b")
    second = Store(location)
    ids = [store.begin_run("s", "s.yaml", "0" * 64, "name: s", PROMPTS, "0.1", None, {}, run_id="farm-1")
           for store in (first, second, first)]
    assert ids == ["farm-1"] * 3 and [r.run_id for r in second.runs()] == ["farm-1"]
    first.add_result("farm-1", "fp32", "phone-1", {}, {"kind": "adb"})
    second.add_result("farm-1", "fp32", "phone-1", {}, {"kind": "adb"})  # a resume, or a second host: no-op
    second.add_result("farm-1", "fp32", "phone-2", {}, {"kind": "adb"})
    assert [(r.target_key, r.host) for r in first.results("farm-1")] == [("phone-1", "host-a"), ("phone-2", "host-b")]
    first.end_run("farm-1", "ok")
    second.begin_run("s", "s.yaml", "0" * 64, "name: s", PROMPTS, "0.1", None, {}, run_id="farm-1")
    assert first.run("farm-1").status == "ok"  # joining an existing run changes nothing of it


def _writer(location: Path | str, run_id: str, writer: int, batches: int, batch: int,
            start: multiprocessing.synchronize.Barrier, spans: multiprocessing.Queue) -> None:
    """One host: opens the store (all at once: the first opens race to make the tables), joins
    the run and its result, then adds its samples; reports when its writing began and ended."""
    start.wait(timeout=60)
    store = Store(location)
    store.begin_run("farm", "farm.yaml", "0" * 64, "name: farm", [], "0.1", None, {}, run_id=run_id)
    store.add_result(run_id, "fp32", "local", {"precision": "fp32"}, {"kind": "local"})
    start.wait(timeout=60)
    began = time.monotonic()
    for number in range(batches):
        store.add_samples(run_id, "fp32", "local", [Sample("ttft_ms", float(number), writer, f"p{i}") for i in range(batch)])
    spans.put((began, time.monotonic()))
    store.close()


def write_concurrently(location: Path | str, run_id: str, batches: int = BATCHES, batch: int = BATCH) -> float:
    """WRITERS processes writing one store at once, `batches` add_samples calls of `batch`
    samples each; the seconds from the first one's first sample to the last one's last."""
    context = multiprocessing.get_context("fork")  # spawn would import this module's imports (torch) 8 times
    start, spans = context.Barrier(WRITERS), context.Queue()
    processes = [context.Process(target=_writer, args=(location, run_id, n, batches, batch, start, spans)) for n in range(WRITERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0] * WRITERS
    began, ended = zip(*(spans.get(timeout=10) for _ in processes))
    return max(ended) - min(began)


def assert_no_sample_lost(location: Path | str, run_id: str, batches: int = BATCHES, batch: int = BATCH) -> None:
    store = Store(location)
    assert [(r.variant_key, r.target_key) for r in store.results(run_id)] == [("fp32", "local")]
    samples = store.samples(run_id, "fp32", "local")
    assert Counter(s.repetition for s in samples) == {writer: batches * batch for writer in range(WRITERS)}
    store.close()


def test_concurrent_writers_lose_no_sample(location) -> None:
    write_concurrently(location, "farm-1")
    assert_no_sample_lost(location, "farm-1")


def test_a_store_not_made_yet_is_not_there(postgres_url, tmp_path) -> None:
    url = new_database(postgres_url)
    assert existing_store(url) is None and existing_store(tmp_path / "none.sqlite") is None
    assert not (tmp_path / "none.sqlite").exists()
    Store(url).close()
    assert existing_store(url).runs() == []


@pytest.mark.parametrize("url", [
    "postgresql://harness:s3cr%40t@127.0.0.1:1/results",  # nothing listens on port 1
    "postgresql://harness@127.0.0.1:1/results?password=s3cr%40t&sslmode=disable",
    "postgresql://harness:s3cr@t@127.0.0.1:notaport/results",
    "mysql://harness:s3cr@t@127.0.0.1/results",
])
def test_a_bad_url_is_one_line_without_its_password(url) -> None:
    with pytest.raises(HarnessError) as error:
        Store(url)
    message = str(error.value)
    assert "\n" not in message and "s3cr" not in message and "--db" in message, message
    assert "postgresql://user[:password]@host[:port]/dbname" in message, message


def test_the_cli_names_db_and_hides_the_password(postgres_url) -> None:
    """A database that is not there on a server that is: one line, exit 2, no traceback."""
    url = postgres_url.replace("harness@", "harness:hunter2@").rpartition("/")[0] + "/missing"
    done = subprocess.run([sys.executable, "-m", "harness.cli", "list", "--db", url], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "--db" in done.stderr and "hunter2" not in done.stderr + done.stdout
    assert "harness:***@" in done.stderr, done.stderr
