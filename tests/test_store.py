from __future__ import annotations

import sqlite3

import pytest

from harness.store import Sample, Store


def test_each_sample_is_durable_as_soon_as_it_is_added(tmp_path) -> None:
    store = Store(tmp_path / "r.sqlite")
    run_id = store.begin_run("s", "s.yaml", "0" * 64, "name: s", [{"id": "p"}], "0.1", None, {"host": "h"})
    store.add_result(run_id, "v", "local", {"precision": "fp32"}, {"kind": "local"})
    store.add_samples(run_id, "v", "local", [Sample("e2e_ms", 1.5, 0, "p")])
    store.add_samples(run_id, "v", "local", [Sample("e2e_ms", 99.0, 0, "p")], warmup=True)
    # Another connection (a crashed harness's successor) sees the sample without any close().
    other = sqlite3.connect(tmp_path / "r.sqlite")
    assert other.execute("SELECT metric, value, warmup FROM samples ORDER BY id").fetchall() == [
        ("e2e_ms", 1.5, 0), ("e2e_ms", 99.0, 1)]
    assert store.samples(run_id, "v", "local") == [Sample("e2e_ms", 1.5, 0, "p")]


def test_runs_results_and_failures_round_trip(tmp_path) -> None:
    store = Store(tmp_path / "r.sqlite")
    first = store.begin_run("s", "s.yaml", "0" * 64, "name: s", [{"id": "p"}], "0.1", "abc", {"host": "h"})
    store.add_result(first, "v", "local", {"precision": "fp32"}, {"kind": "local"})
    store.fail_result(first, "v", "local", "runner timed out")
    store.end_run(first, "failed")
    second = store.begin_run("s", "s.yaml", "0" * 64, "name: s", [{"id": "p"}], "0.1", "abc", {"host": "h"})
    assert store.run().run_id == second
    assert store.run(first).status == "failed" and store.run(first).environment == {"host": "h"}
    assert [(r.status, r.error) for r in store.results(first)] == [("failed", "runner timed out")]
    assert [r.run_id for r in store.runs("s")] == [first, second]


def test_a_failing_batch_of_samples_leaves_no_row(tmp_path) -> None:
    store = Store(tmp_path / "r.sqlite")
    run_id = store.begin_run("s", "s.yaml", "0" * 64, "name: s", [{"id": "p"}], "0.1", None, {"host": "h"})
    store.add_samples(run_id, "v", "local", [Sample("e2e_ms", 1.0, 0, "p")])
    batch = [Sample("e2e_ms", 2.0, 1, "p"), Sample("ttft_ms", 3.0, 1, "p"), Sample("itl_ms", None, 1, "p")]  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):  # value is NOT NULL: the third row fails
        store.add_samples(run_id, "v", "local", batch)
    assert store.samples(run_id, "v", "local") == [Sample("e2e_ms", 1.0, 0, "p")]
    store.add_samples(run_id, "v", "local", batch[:2])  # the connection is usable afterwards
    assert len(store.samples(run_id, "v", "local")) == 3
