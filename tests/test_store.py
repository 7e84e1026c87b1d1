from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import psycopg
import pytest

from harness.store import Sample, Store

INTEGRITY_ERRORS = (sqlite3.IntegrityError, psycopg.IntegrityError)


def new_database(postgres_url: str) -> str:
    """The URL of a new, empty database on the session's PostgreSQL server."""
    name = f"t{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return postgres_url.rpartition("/")[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """A test's own store: an SQLite file, or a new database of the session's PostgreSQL server."""
    if request.param == "sqlite":
        return tmp_path / "r.sqlite"
    return new_database(request.getfixturevalue("postgres_url"))


def raw_rows(location: Path | str, query: str) -> list[tuple]:
    """`query` through a connection of its own, not the store's."""
    if isinstance(location, Path):
        with sqlite3.connect(location) as db:
            return db.execute(query).fetchall()
    with psycopg.connect(location) as db:
        return db.execute(query).fetchall()


def test_each_sample_is_durable_as_soon_as_it_is_added(location) -> None:
    store = Store(location)
    run_id = store.begin_run("s", "s.yaml", "0" * 64, "name: s", [{"id": "p"}], "0.1", None, {"host": "h"})
    store.add_result(run_id, "v", "local", {"precision": "fp32"}, {"kind": "local"})
    store.add_samples(run_id, "v", "local", [Sample("e2e_ms", 1.5, 0, "p")])
    store.add_samples(run_id, "v", "local", [Sample("e2e_ms", 99.0, 0, "p")], warmup=True)
    # Another connection (a crashed harness's successor) sees the sample without any close().
    assert raw_rows(location, "SELECT metric, value, warmup FROM samples ORDER BY id") == [
        ("e2e_ms", 1.5, 0), ("e2e_ms", 99.0, 1)]
    assert store.samples(run_id, "v", "local") == [Sample("e2e_ms", 1.5, 0, "p")]


def test_runs_results_and_failures_round_trip(location) -> None:
    store = Store(location)
    first = store.begin_run("s", "s.yaml", "0" * 64, "name: s", [{"id": "p"}], "0.1", "abc", {"host": "h"})
    store.add_result(first, "v", "local", {"precision": "fp32"}, {"kind": "local"})
    store.fail_result(first, "v", "local", "runner timed out")
    store.end_run(first, "failed")
    second = store.begin_run("s", "s.yaml", "0" * 64, "name: s", [{"id": "p"}], "0.1", "abc", {"host": "h"})
    assert store.run().run_id == second
    assert store.run(first).status == "failed" and store.run(first).environment == {"host": "h"}
    assert [(r.status, r.error) for r in store.results(first)] == [("failed", "runner timed out")]
    assert [r.run_id for r in store.runs("s")] == [first, second]


def test_a_failing_batch_of_samples_leaves_no_row(location) -> None:
    store = Store(location)
    run_id = store.begin_run("s", "s.yaml", "0" * 64, "name: s", [{"id": "p"}], "0.1", None, {"host": "h"})
    store.add_samples(run_id, "v", "local", [Sample("e2e_ms", 1.0, 0, "p")])
    batch = [Sample("e2e_ms", 2.0, 1, "p"), Sample("ttft_ms", 3.0, 1, "p"), Sample("itl_ms", None, 1, "p")]  # type: ignore[arg-type]
    with pytest.raises(INTEGRITY_ERRORS):  # value is NOT NULL: the third row fails
        store.add_samples(run_id, "v", "local", batch)
    assert store.samples(run_id, "v", "local") == [Sample("e2e_ms", 1.0, 0, "p")]
    store.add_samples(run_id, "v", "local", batch[:2])  # the connection is usable afterwards
    assert len(store.samples(run_id, "v", "local")) == 3


def test_each_result_records_its_host(location, monkeypatch) -> None:
    monkeypatch.setenv("HARNESS_HOST", "bench-7")
    store = Store(location)
    run_id = store.begin_run("s", "s.yaml", "0" * 64, "name: s", [], "0.1", None, {})
    store.add_result(run_id, "v", "local", {}, {"kind": "local"})
    assert [r.host for r in store.results(run_id)] == ["bench-7"]


def test_an_older_sqlite_store_gains_the_host_column(tmp_path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as old:  # results as versions before hosts were kept made it
        old.executescript("""
            CREATE TABLE results (run_id TEXT NOT NULL, variant_key TEXT NOT NULL, target_key TEXT NOT NULL,
                variant TEXT NOT NULL, target TEXT NOT NULL, status TEXT NOT NULL, error TEXT,
                PRIMARY KEY (run_id, variant_key, target_key));
            INSERT INTO results VALUES ('r1', 'v', 'local', '{}', '{}', 'ok', NULL);""")
    store = Store(path)
    store.add_result("r1", "w", "local", {}, {})
    assert [r.host is None for r in store.results("r1")] == [True, False]
    assert Store(path).results("r1") == store.results("r1")  # opening it again changes nothing
