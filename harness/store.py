"""The results store, each sample committed the moment it is measured: an SQLite file (the
default: one host, or several processes of one host) or a PostgreSQL database
(`postgresql://user@host:port/dbname`: a farm's hosts writing one store).

A run holds one result per (variant, target); a result holds raw samples and outputs.
Nothing is aggregated here: statistics are derived when results are read. Both backends run
the schema and the SQL below as written, SQLite's way; `Dialect` is what PostgreSQL says
differently.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from harness.errors import HarnessError

DEFAULT_DB = Path("reports/results.sqlite")
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
ALLOWED = "an SQLite file, or postgresql://user[:password]@host[:port]/dbname"
BUSY_TIMEOUT_S = 60  # SQLite: how long a write waits for another process's write to end
CONNECT_TIMEOUT_S = 10

# `/*rowid*/` marks the tables read in insertion order: SQLite has a rowid, PostgreSQL gets one.
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    scenario TEXT NOT NULL,
    scenario_path TEXT NOT NULL,
    scenario_sha256 TEXT NOT NULL,
    scenario_yaml TEXT NOT NULL,
    prompts TEXT NOT NULL,
    harness_version TEXT NOT NULL,
    git_commit TEXT,
    environment TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    variant_key TEXT NOT NULL,
    target_key TEXT NOT NULL,
    variant TEXT NOT NULL,
    target TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    host TEXT /*rowid*/,
    PRIMARY KEY (run_id, variant_key, target_key)
);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    variant_key TEXT NOT NULL,
    target_key TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    repetition INTEGER NOT NULL,
    prompt_id TEXT,
    warmup INTEGER NOT NULL,
    recorded_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_by_result ON samples (run_id, variant_key, target_key, metric);
CREATE TABLE IF NOT EXISTS outputs (
    run_id TEXT NOT NULL,
    variant_key TEXT NOT NULL,
    target_key TEXT NOT NULL,
    repetition INTEGER NOT NULL,
    prompt_id TEXT NOT NULL,
    adapter TEXT NOT NULL,
    text TEXT NOT NULL,
    token_ids TEXT NOT NULL /*rowid*/,
    PRIMARY KEY (run_id, variant_key, target_key, repetition, prompt_id, adapter)
);
CREATE TABLE IF NOT EXISTS repetitions (
    run_id TEXT NOT NULL,
    variant_key TEXT NOT NULL,
    target_key TEXT NOT NULL,
    repetition INTEGER NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (run_id, variant_key, target_key, repetition)
);
CREATE TABLE IF NOT EXISTS device_states (
    run_id TEXT NOT NULL,
    variant_key TEXT NOT NULL,
    target_key TEXT NOT NULL,
    repetition INTEGER NOT NULL,
    phase TEXT NOT NULL,
    state TEXT NOT NULL,
    recorded_at REAL NOT NULL /*rowid*/
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    variant_key TEXT NOT NULL,
    target_key TEXT NOT NULL,
    repetition INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS noise (
    scenario TEXT NOT NULL,
    target_key TEXT NOT NULL,
    metric TEXT NOT NULL,
    noise REAL NOT NULL,
    run_a TEXT NOT NULL,
    run_b TEXT NOT NULL,
    measured_at REAL NOT NULL,
    PRIMARY KEY (scenario, target_key, metric)
);
CREATE TABLE IF NOT EXISTS comparisons (
    run_id TEXT NOT NULL,
    against TEXT NOT NULL,
    regressions INTEGER NOT NULL,
    compared_at REAL NOT NULL,
    PRIMARY KEY (run_id, against)
);
"""
TABLES = frozenset(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA))


@dataclass(frozen=True)
class Dialect:
    placeholder: str
    schema_words: tuple[tuple[str, str], ...]  # (pattern, replacement) applied to SCHEMA
    begin: str  # a write transaction
    schema_lock: str | None  # taken before the schema is made, so concurrent first opens do not race
    tables: str  # the names of the tables

    def sql(self, query: str) -> str:
        return query.replace("?", self.placeholder)

    def schema(self) -> list[str]:
        text = SCHEMA
        for pattern, replacement in self.schema_words:
            text = re.sub(pattern, replacement, text)
        return [statement for statement in text.split(";") if statement.strip()]


# BEGIN IMMEDIATE: a writer takes the file's write lock first, so two processes never both
# read then both try to write (SQLite's busy handler cannot resolve that; it waits on this).
SQLITE = Dialect("?", (), "BEGIN IMMEDIATE", None, "SELECT name FROM sqlite_master WHERE type='table'")
POSTGRES = Dialect(
    "%s",
    ((r"\bREAL\b", "DOUBLE PRECISION"),
     (r"\bINTEGER PRIMARY KEY\b", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
     (r"/\*rowid\*/", ", rowid BIGINT GENERATED ALWAYS AS IDENTITY")),
    "BEGIN", "SELECT pg_advisory_xact_lock(1016)",  # any constant: this store's lock
    "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()",
)


def _upsert(table: str, columns: str, key_columns: int) -> str:
    """An INSERT that replaces the row with the same key (SQLite's INSERT OR REPLACE), in the
    form both backends read; the key is the first `key_columns` columns."""
    names = columns.split()
    updates = ", ".join(f"{name}=excluded.{name}" for name in names[key_columns:])
    return (f"INSERT INTO {table} ({', '.join(names)}) VALUES ({','.join('?' * len(names))})"
            f" ON CONFLICT ({', '.join(names[:key_columns])}) DO UPDATE SET {updates}")


PUT_OUTPUT = _upsert("outputs", "run_id variant_key target_key repetition prompt_id adapter text token_ids", 6)
PUT_REPETITION = _upsert("repetitions", "run_id variant_key target_key repetition status error recorded_at", 4)
PUT_NOISE = _upsert("noise", "scenario target_key metric noise run_a run_b measured_at", 3)
PUT_COMPARISON = _upsert("comparisons", "run_id against regressions compared_at", 2)


def store_location(text: str) -> Path | str:
    """--db's value: a URL stays text (a Path would fold its '//'), anything else is a file."""
    return text if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", text) else Path(text)


def _secrets(url: str) -> list[str]:
    """The URL's password, from its user part or a password= parameter, as written and decoded."""
    rest = url.partition("://")[2]
    user = rest.rpartition("@")[0]  # the last '@': an unescaped '@' in the password stays inside
    found = [user.partition(":")[2]] if ":" in user else []
    found += [value for key, _, value in (p.partition("=") for p in url.partition("?")[2].split("&"))
              if unquote(key) == "password"]
    found += [unquote(secret) for secret in found]
    return sorted({secret for secret in found if secret}, key=len, reverse=True)


def _hide(text: str, url: str) -> str:
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


def masked(location: str | Path) -> str:
    """A store's location as messages show it: a URL's password as ***."""
    return _hide(str(location), str(location))


def existing_store(location: str | Path) -> Store | None:
    """The store at `location`, or None when there is none yet (no file; a database without
    the tables). A server that does not answer raises HarnessError."""
    try:
        return Store(location, create=False)
    except FileNotFoundError:
        return None


def _connect_postgres(url: str) -> Any:
    if not url.startswith(POSTGRES_SCHEMES):
        raise HarnessError(f"{masked(url)}: --db: not a results store; --db takes {ALLOWED}")
    import psycopg  # only a PostgreSQL store needs it

    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except (psycopg.Error, ValueError) as exc:
        reason = _hide(" ".join(str(exc).split()), url)
        raise HarnessError(f"{masked(url)}: --db: no PostgreSQL store answers there ({reason}); "
                           f"--db takes {ALLOWED}") from None


def _connect_sqlite(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Autocommit: every write below is durable when the call returns; writes of several rows
    # that belong together go through _transaction. WAL and the busy timeout let several
    # processes (pytest-xdist workers) write one file.
    db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    db.execute("PRAGMA journal_mode=WAL")
    return db


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    scenario: str
    scenario_path: str
    scenario_sha256: str
    scenario_yaml: str
    prompts: list[dict]
    harness_version: str
    git_commit: str | None
    environment: dict
    started_at: float
    ended_at: float | None
    status: str


@dataclass(frozen=True)
class ResultRecord:
    variant_key: str
    target_key: str
    variant: dict
    target: dict
    status: str
    error: str | None
    host: str | None  # the host it ran on (None: stored by a version before hosts were kept)


@dataclass(frozen=True)
class Sample:
    metric: str
    value: float
    repetition: int
    prompt_id: str | None


class Store:
    """`location`: an SQLite file (made if missing) or a postgresql:// URL (its tables made if
    missing). With `create=False` a store that is not there yet raises FileNotFoundError."""

    def __init__(self, location: str | Path = DEFAULT_DB, create: bool = True) -> None:
        self.host = os.environ.get("HARNESS_HOST") or socket.gethostname()  # what add_result records
        self._location = location
        self.path: Path | str  # the file, or the URL with its password masked: for messages
        if isinstance(location, str) and "://" in location:
            self.path, self._dialect, self._db = masked(location), POSTGRES, _connect_postgres(location)
        else:
            self.path, self._dialect = Path(location), SQLITE
            if not create and not self.path.is_file():
                raise FileNotFoundError(f"{self.path}: no results store there")
            self._db = _connect_sqlite(self.path)
        if not create and "runs" not in self._tables():
            self.close()
            raise FileNotFoundError(f"{self.path}: no results store there")
        self._setup()

    def another(self) -> Store:
        """Another connection to this store, for another thread (a connection serves one)."""
        return Store(self._location)

    def close(self) -> None:
        self._db.close()

    def _execute(self, query: str, args: tuple = ()) -> Any:
        return self._db.execute(self._dialect.sql(query), args)

    def _execute_many(self, query: str, rows: list[tuple]) -> None:
        self._db.cursor().executemany(self._dialect.sql(query), rows)

    def _tables(self) -> set[str]:
        return {name for (name,) in self._db.execute(self._dialect.tables)}

    def _columns(self, table: str) -> set[str]:
        return {column[0] for column in self._db.execute(f"SELECT * FROM {table} LIMIT 0").description}

    def _setup(self) -> None:
        """The tables, made if missing, and the columns older versions lack (results.host),
        added; one opener at a time, so hosts opening a new store together do not collide."""
        if TABLES <= self._tables() and "host" in self._columns("results"):
            return
        with self._transaction():
            if self._dialect.schema_lock:
                self._db.execute(self._dialect.schema_lock)
            for statement in self._dialect.schema():
                self._db.execute(statement)
            if "host" not in self._columns("results"):
                self._db.execute("ALTER TABLE results ADD COLUMN host TEXT")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """All statements inside, or none. In autocommit mode `with connection:` opens no
        transaction, so a failing executemany would keep the rows before the failing one."""
        self._db.execute(self._dialect.begin)
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- writing ---------------------------------------------------------------------
    def begin_run(self, scenario: str, scenario_path: str, sha256: str, yaml_text: str, prompts: list[dict],
                  harness_version: str, git_commit: str | None, environment: dict, run_id: str | None = None) -> str:
        """A new run; given `run_id`, that run, made by whichever caller (host) comes first and
        joined by the others."""
        run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self._execute(
            "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,NULL,'running') ON CONFLICT DO NOTHING",
            (run_id, scenario, scenario_path, sha256, yaml_text, json.dumps(prompts), harness_version, git_commit,
             json.dumps(environment), time.time()),
        )
        return run_id

    def end_run(self, run_id: str, status: str) -> None:
        self._execute("UPDATE runs SET ended_at=?, status=? WHERE run_id=?", (time.time(), status, run_id))

    def add_result(self, run_id: str, variant_key: str, target_key: str, variant: dict, target: dict) -> None:
        """The first add of a (run, variant, target) stores it with this host; later ones (a
        resume, another host) leave it as it is."""
        self._execute(
            "INSERT INTO results (run_id, variant_key, target_key, variant, target, status, error, host)"
            " VALUES (?,?,?,?,?,'ok',NULL,?) ON CONFLICT DO NOTHING",
            (run_id, variant_key, target_key, json.dumps(variant), json.dumps(target), self.host),
        )

    def fail_result(self, run_id: str, variant_key: str, target_key: str, error: str) -> None:
        self._execute(
            "UPDATE results SET status='failed', error=? WHERE run_id=? AND variant_key=? AND target_key=?",
            (error, run_id, variant_key, target_key),
        )

    def add_samples(self, run_id: str, variant_key: str, target_key: str, samples: list[Sample], warmup: bool = False) -> None:
        now = time.time()
        with self._transaction():  # all samples of one measurement, or none
            self._execute_many(
                "INSERT INTO samples (run_id, variant_key, target_key, metric, value, repetition, prompt_id, warmup, recorded_at)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                [(run_id, variant_key, target_key, s.metric, s.value, s.repetition, s.prompt_id, int(warmup), now)
                 for s in samples],
            )

    def add_output(self, run_id: str, variant_key: str, target_key: str, repetition: int,
                   prompt_id: str, adapter: str | None, text: str, token_ids: list[int]) -> None:
        """One generated text; `adapter` names the LoRA adapter that produced it (None: the base model)."""
        self._execute(PUT_OUTPUT, (run_id, variant_key, target_key, repetition, prompt_id, adapter or "", text,
                                   json.dumps(token_ids)))

    def end_repetition(self, run_id: str, variant_key: str, target_key: str, repetition: int,
                       error: str | None = None) -> None:
        """One runner process finished: 'ok', or 'failed' with its reason. `--resume` redoes the rest."""
        self._execute(PUT_REPETITION, (run_id, variant_key, target_key, repetition, "failed" if error else "ok", error,
                                       time.time()))

    def add_device_state(self, run_id: str, variant_key: str, target_key: str, repetition: int,
                         phase: str, state: dict) -> None:
        """The device's state (thermal, battery, clocks...) before or after one runner process."""
        self._execute(
            "INSERT INTO device_states VALUES (?,?,?,?,?,?,?)",
            (run_id, variant_key, target_key, repetition, phase, json.dumps(state), time.time()),
        )

    def reopen(self, run_id: str, variant_key: str, target_key: str, repetition: int) -> None:
        """Before a repetition runs again (--resume): drop what its unfinished attempt left and mark
        the result ok again. The failed attempt stays in `repetitions` until the new one replaces it."""
        key = (run_id, variant_key, target_key)
        with self._transaction():
            for table in ("samples", "outputs", "device_states"):
                self._execute(f"DELETE FROM {table} WHERE run_id=? AND variant_key=? AND target_key=?"
                              " AND repetition=?", (*key, repetition))
            self._execute("UPDATE results SET status='ok', error=NULL WHERE run_id=? AND variant_key=?"
                          " AND target_key=?", key)

    def add_job(self, run_id: str, variant_key: str, target_key: str, repetition: int, record: dict) -> None:
        """A remote job (or export) of a target, e.g. {"kind": "profile", "job_id", "url"}, as it is submitted."""
        self._execute("INSERT INTO jobs (run_id, variant_key, target_key, repetition, record) VALUES (?,?,?,?,?)",
                      (run_id, variant_key, target_key, repetition, json.dumps(record)))

    def set_noise(self, scenario: str, run_a: str, run_b: str, noise: dict[tuple[str, str], float]) -> None:
        """A calibration's result, per (target key, metric); replaces the scenario's earlier one."""
        now = time.time()
        with self._transaction():
            self._execute_many(PUT_NOISE, [(scenario, target, metric, value, run_a, run_b, now)
                                           for (target, metric), value in noise.items()])

    def record_comparison(self, run_id: str, against: str, regressions: int) -> None:
        self._execute(PUT_COMPARISON, (run_id, against, regressions, time.time()))

    # -- reading ---------------------------------------------------------------------
    def completed(self, run_id: str) -> set[tuple[str, str, int]]:
        """(variant_key, target_key, repetition) of every repetition that finished ok."""
        rows = self._execute(
            "SELECT variant_key, target_key, repetition FROM repetitions WHERE run_id=? AND status='ok'", (run_id,))
        return {tuple(row) for row in rows}

    def device_states(self, run_id: str, variant_key: str, target_key: str) -> list[dict]:
        rows = self._execute(
            "SELECT repetition, phase, state FROM device_states WHERE run_id=? AND variant_key=? AND target_key=?"
            " ORDER BY rowid", (run_id, variant_key, target_key))
        return [{"repetition": r, "phase": p, **json.loads(state)} for r, p, state in rows]

    def jobs(self, run_id: str, variant_key: str, target_key: str) -> list[dict]:
        rows = self._execute("SELECT repetition, record FROM jobs WHERE run_id=? AND variant_key=? AND target_key=?"
                             " ORDER BY id", (run_id, variant_key, target_key))
        return [{"repetition": repetition, **json.loads(record)} for repetition, record in rows]

    def runs(self, scenario: str | None = None) -> list[RunRecord]:
        query = "SELECT * FROM runs"
        args: tuple = ()
        if scenario is not None:
            query, args = query + " WHERE scenario=?", (scenario,)
        return [self._run(row) for row in self._execute(query + " ORDER BY started_at", args)]

    def run(self, run_id: str | None = None) -> RunRecord | None:
        """The run with this id, or the latest run when no id is given."""
        if run_id is None:
            row = self._execute("SELECT * FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
        else:
            row = self._execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return self._run(row) if row else None

    def results(self, run_id: str) -> list[ResultRecord]:
        rows = self._execute(
            "SELECT variant_key, target_key, variant, target, status, error, host FROM results WHERE run_id=?"
            " ORDER BY rowid",
            (run_id,),
        )
        return [ResultRecord(v, t, json.loads(vj), json.loads(tj), s, e, h) for v, t, vj, tj, s, e, h in rows]

    def samples(self, run_id: str, variant_key: str, target_key: str) -> list[Sample]:
        """Measured samples, warm-ups excluded, in the order they were recorded."""
        rows = self._execute(
            "SELECT metric, value, repetition, prompt_id FROM samples"
            " WHERE run_id=? AND variant_key=? AND target_key=? AND warmup=0 ORDER BY id",
            (run_id, variant_key, target_key),
        )
        return [Sample(*row) for row in rows]

    def run_samples(self, run_id: str, metrics: tuple[str, ...] | None = None) -> dict[tuple[str, str, str], list[Sample]]:
        """A run's measured samples (warm-ups excluded) per (variant key, target key, metric)."""
        query = "SELECT variant_key, target_key, metric, value, repetition, prompt_id FROM samples WHERE run_id=? AND warmup=0"
        args: tuple = (run_id,)
        if metrics is not None:
            query += f" AND metric IN ({','.join('?' * len(metrics))})"
            args += tuple(metrics)
        grouped: dict[tuple[str, str, str], list[Sample]] = {}
        for variant, target, metric, value, repetition, prompt in self._execute(query + " ORDER BY id", args):
            grouped.setdefault((variant, target, metric), []).append(Sample(metric, value, repetition, prompt))
        return grouped

    def outputs(self, run_id: str, variant_key: str, target_key: str) -> list[dict]:
        rows = self._execute(
            "SELECT repetition, prompt_id, adapter, text, token_ids FROM outputs"
            " WHERE run_id=? AND variant_key=? AND target_key=? ORDER BY repetition, rowid",
            (run_id, variant_key, target_key),
        )
        return [{"repetition": r, "prompt_id": p, "adapter": a or None, "text": t, "token_ids": json.loads(ids)}
                for r, p, a, t, ids in rows]

    def noise(self, scenario: str) -> dict[tuple[str, str], float]:
        """The calibrated noise of a scenario's metrics per (target key, metric); empty if never calibrated."""
        rows = self._execute("SELECT target_key, metric, noise FROM noise WHERE scenario=?", (scenario,))
        return {(target, metric): value for target, metric, value in rows}

    def regressed(self, run_id: str) -> bool:
        """Whether any comparison of this run against another found a regression."""
        row = self._execute("SELECT MAX(regressions) FROM comparisons WHERE run_id=?", (run_id,)).fetchone()
        return bool(row[0])

    @staticmethod
    def _run(row: tuple) -> RunRecord:
        values = list(row)
        values[5], values[8] = json.loads(values[5]), json.loads(values[8])  # prompts, environment
        return RunRecord(*values)
