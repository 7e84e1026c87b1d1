"""`harness export`: pytest-benchmark JSON that `pytest-benchmark compare` reads, and samples as CSV/Parquet."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pandas as pd

from conftest import CompareRuns, harness


def _export(runs: CompareRuns, run_id: str, fmt: str, out) -> None:
    done = harness("export", run_id, "--format", fmt, "--out", str(out), "--db", str(runs.db))
    assert done.returncode == 0, done.stderr


def test_pytest_benchmark_compare_reads_two_exports(compare_runs: CompareRuns, tmp_path) -> None:
    first, slowed = tmp_path / "0001_first.json", tmp_path / "0002_slowed.json"
    _export(compare_runs, compare_runs.first["run_id"], "pytest-benchmark", first)
    _export(compare_runs, compare_runs.slowed["run_id"], "pytest-benchmark", slowed)
    document = json.loads(first.read_text())
    assert {b["group"] for b in document["benchmarks"]} >= {"ttft_ms", "itl_ms", "e2e_ms", "load_ms"}
    ttft = next(b for b in document["benchmarks"] if b["group"] == "ttft_ms")
    ms = compare_runs.first["results"][0]["metrics"]["ttft_ms"]
    assert ttft["stats"]["data"] == [v / 1e3 for v in ms["samples"]]  # seconds, pytest-benchmark's unit
    done = subprocess.run([sys.executable, "-m", "pytest_benchmark", "compare", str(first), str(slowed),
                           "--columns", "min,median,max,rounds", "--group-by", "group"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Failed to load" not in done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("e2e_ms[fp16-s1-greedy@local] (")]
    assert len(rows) == 2 and any("0001_first)" in r for r in rows) and any("0002_slowed)" in r for r in rows)


def test_csv_and_parquet_hold_every_sample(compare_runs: CompareRuns, tmp_path) -> None:
    run_id = compare_runs.second["run_id"]
    _export(compare_runs, run_id, "csv", tmp_path / "s.csv")
    _export(compare_runs, run_id, "parquet", tmp_path / "s.parquet")
    csv, parquet = pd.read_csv(tmp_path / "s.csv"), pd.read_parquet(tmp_path / "s.parquet")
    with sqlite3.connect(compare_runs.db) as db:
        stored = db.execute("SELECT COUNT(*) FROM samples WHERE run_id=? AND warmup=0", (run_id,)).fetchone()[0]
    assert len(csv) == len(parquet) == stored > 0
    assert list(parquet.columns) == list(csv.columns)
    assert parquet["value"].tolist() == csv["value"].tolist()
    decode = parquet[parquet.metric == "decode_tokens_per_s"]
    assert sorted(decode.value) == sorted(compare_runs.second["results"][0]["metrics"]["decode_tokens_per_s"]["samples"])
