"""The results store: SQLite, one file, each sample committed the moment it is measured.

A run holds one result per (variant, target); a result holds raw samples and outputs.
Nothing is aggregated here: statistics are derived when results are read.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DB = Path("reports/results.sqlite")

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
    token_ids TEXT NOT NULL,
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
    recorded_at REAL NOT NULL
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


@dataclass(frozen=True)
class Sample:
    metric: str
    value: float
    repetition: int
    prompt_id: str | None


class Store:
    def __init__(self, path: Path = DEFAULT_DB) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # Autocommit: every write below is durable when the call returns; writes of several
        # rows that belong together go through _transaction.
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """All statements inside, or none. In autocommit mode `with connection:` opens no
        transaction, so a failing executemany would keep the rows before the failing one."""
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- writing ---------------------------------------------------------------------
    def begin_run(self, scenario: str, scenario_path: str, sha256: str, yaml_text: str, prompts: list[dict],
                  harness_version: str, git_commit: str | None, environment: dict) -> str:
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self._db.execute(
            "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,NULL,'running')",
            (run_id, scenario, scenario_path, sha256, yaml_text, json.dumps(prompts), harness_version, git_commit,
             json.dumps(environment), time.time()),
        )
        return run_id

    def end_run(self, run_id: str, status: str) -> None:
        self._db.execute("UPDATE runs SET ended_at=?, status=? WHERE run_id=?", (time.time(), status, run_id))

    def add_result(self, run_id: str, variant_key: str, target_key: str, variant: dict, target: dict) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO results VALUES (?,?,?,?,?,'ok',NULL)",
            (run_id, variant_key, target_key, json.dumps(variant), json.dumps(target)),
        )

    def fail_result(self, run_id: str, variant_key: str, target_key: str, error: str) -> None:
        self._db.execute(
            "UPDATE results SET status='failed', error=? WHERE run_id=? AND variant_key=? AND target_key=?",
            (error, run_id, variant_key, target_key),
        )

    def add_samples(self, run_id: str, variant_key: str, target_key: str, samples: list[Sample], warmup: bool = False) -> None:
        now = time.time()
        with self._transaction():  # all samples of one measurement, or none
            self._db.executemany(
                "INSERT INTO samples (run_id, variant_key, target_key, metric, value, repetition, prompt_id, warmup, recorded_at)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                [(run_id, variant_key, target_key, s.metric, s.value, s.repetition, s.prompt_id, int(warmup), now)
                 for s in samples],
            )

    def add_output(self, run_id: str, variant_key: str, target_key: str, repetition: int,
                   prompt_id: str, adapter: str | None, text: str, token_ids: list[int]) -> None:
        """One generated text; `adapter` names the LoRA adapter that produced it (None: the base model)."""
        self._db.execute(
            "INSERT OR REPLACE INTO outputs VALUES (?,?,?,?,?,?,?,?)",
            (run_id, variant_key, target_key, repetition, prompt_id, adapter or "", text, json.dumps(token_ids)),
        )

    def end_repetition(self, run_id: str, variant_key: str, target_key: str, repetition: int,
                       error: str | None = None) -> None:
        """One runner process finished: 'ok', or 'failed' with its reason. `--resume` redoes the rest."""
        self._db.execute(
            "INSERT OR REPLACE INTO repetitions VALUES (?,?,?,?,?,?,?)",
            (run_id, variant_key, target_key, repetition, "failed" if error else "ok", error, time.time()),
        )

    def add_device_state(self, run_id: str, variant_key: str, target_key: str, repetition: int,
                         phase: str, state: dict) -> None:
        """The device's state (thermal, battery, clocks...) before or after one runner process."""
        self._db.execute(
            "INSERT INTO device_states VALUES (?,?,?,?,?,?,?)",
            (run_id, variant_key, target_key, repetition, phase, json.dumps(state), time.time()),
        )

    def reopen(self, run_id: str, variant_key: str, target_key: str, repetition: int) -> None:
        """Before a repetition runs again (--resume): drop what its unfinished attempt left and mark
        the result ok again. The failed attempt stays in `repetitions` until the new one replaces it."""
        key = (run_id, variant_key, target_key)
        with self._transaction():
            for table in ("samples", "outputs", "device_states"):
                self._db.execute(f"DELETE FROM {table} WHERE run_id=? AND variant_key=? AND target_key=?"
                                 " AND repetition=?", (*key, repetition))
            self._db.execute("UPDATE results SET status='ok', error=NULL WHERE run_id=? AND variant_key=?"
                             " AND target_key=?", key)

    def add_job(self, run_id: str, variant_key: str, target_key: str, repetition: int, record: dict) -> None:
        """A remote job (or export) of a target, e.g. {"kind": "profile", "job_id", "url"}, as it is submitted."""
        self._db.execute("INSERT INTO jobs (run_id, variant_key, target_key, repetition, record) VALUES (?,?,?,?,?)",
                         (run_id, variant_key, target_key, repetition, json.dumps(record)))

    def set_noise(self, scenario: str, run_a: str, run_b: str, noise: dict[tuple[str, str], float]) -> None:
        """A calibration's result, per (target key, metric); replaces the scenario's earlier one."""
        now = time.time()
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO noise VALUES (?,?,?,?,?,?,?)",
                [(scenario, target, metric, value, run_a, run_b, now) for (target, metric), value in noise.items()],
            )

    def record_comparison(self, run_id: str, against: str, regressions: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO comparisons VALUES (?,?,?,?)",
                         (run_id, against, regressions, time.time()))

    # -- reading ---------------------------------------------------------------------
    def completed(self, run_id: str) -> set[tuple[str, str, int]]:
        """(variant_key, target_key, repetition) of every repetition that finished ok."""
        rows = self._db.execute(
            "SELECT variant_key, target_key, repetition FROM repetitions WHERE run_id=? AND status='ok'", (run_id,))
        return {tuple(row) for row in rows}

    def device_states(self, run_id: str, variant_key: str, target_key: str) -> list[dict]:
        rows = self._db.execute(
            "SELECT repetition, phase, state FROM device_states WHERE run_id=? AND variant_key=? AND target_key=?"
            " ORDER BY rowid", (run_id, variant_key, target_key))
        return [{"repetition": r, "phase": p, **json.loads(state)} for r, p, state in rows]

    def jobs(self, run_id: str, variant_key: str, target_key: str) -> list[dict]:
        rows = self._db.execute("SELECT repetition, record FROM jobs WHERE run_id=? AND variant_key=? AND target_key=?"
                                " ORDER BY id", (run_id, variant_key, target_key))
        return [{"repetition": repetition, **json.loads(record)} for repetition, record in rows]

    def runs(self, scenario: str | None = None) -> list[RunRecord]:
        query = "SELECT * FROM runs"
        args: tuple = ()
        if scenario is not None:
            query, args = query + " WHERE scenario=?", (scenario,)
        return [self._run(row) for row in self._db.execute(query + " ORDER BY started_at", args)]

    def run(self, run_id: str | None = None) -> RunRecord | None:
        """The run with this id, or the latest run when no id is given."""
        if run_id is None:
            row = self._db.execute("SELECT * FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
        else:
            row = self._db.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return self._run(row) if row else None

    def results(self, run_id: str) -> list[ResultRecord]:
        rows = self._db.execute(
            "SELECT variant_key, target_key, variant, target, status, error FROM results WHERE run_id=? ORDER BY rowid",
            (run_id,),
        )
        return [ResultRecord(v, t, json.loads(vj), json.loads(tj), s, e) for v, t, vj, tj, s, e in rows]

    def samples(self, run_id: str, variant_key: str, target_key: str) -> list[Sample]:
        """Measured samples, warm-ups excluded, in the order they were recorded."""
        rows = self._db.execute(
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
        for variant, target, metric, value, repetition, prompt in self._db.execute(query + " ORDER BY id", args):
            grouped.setdefault((variant, target, metric), []).append(Sample(metric, value, repetition, prompt))
        return grouped

    def outputs(self, run_id: str, variant_key: str, target_key: str) -> list[dict]:
        rows = self._db.execute(
            "SELECT repetition, prompt_id, adapter, text, token_ids FROM outputs"
            " WHERE run_id=? AND variant_key=? AND target_key=? ORDER BY repetition, rowid",
            (run_id, variant_key, target_key),
        )
        return [{"repetition": r, "prompt_id": p, "adapter": a or None, "text": t, "token_ids": json.loads(ids)}
                for r, p, a, t, ids in rows]

    def noise(self, scenario: str) -> dict[tuple[str, str], float]:
        """The calibrated noise of a scenario's metrics per (target key, metric); empty if never calibrated."""
        rows = self._db.execute("SELECT target_key, metric, noise FROM noise WHERE scenario=?", (scenario,))
        return {(target, metric): value for target, metric, value in rows}

    def regressed(self, run_id: str) -> bool:
        """Whether any comparison of this run against another found a regression."""
        row = self._db.execute("SELECT MAX(regressions) FROM comparisons WHERE run_id=?", (run_id,)).fetchone()
        return bool(row[0])

    @staticmethod
    def _run(row: tuple) -> RunRecord:
        values = list(row)
        values[5], values[8] = json.loads(values[5]), json.loads(values[8])  # prompts, environment
        return RunRecord(*values)
