"""Benchmark of the shared results store (run with `make bench`, idle machine).

- 8 processes (a farm's hosts) adding samples to one PostgreSQL store at once: samples per
  second over the writing (from the first writer's first sample to the last one's last;
  the processes' start is not counted), and not one sample lost. SQLite, 8 processes of one
  host on one file, is measured beside it for scale.
"""

from __future__ import annotations

import statistics

from test_store import location  # noqa: F401 (the fixture: an SQLite file, a PostgreSQL database)
from test_store_postgres import WRITERS, assert_no_sample_lost, write_concurrently

BATCHES, BATCH = 200, 10  # per writer: 200 measurements of 10 samples, each one transaction


def test_eight_concurrent_writers_lose_no_sample(location, benchmark) -> None:  # noqa: F811
    spans: list[float] = []

    def write() -> None:
        spans.append(write_concurrently(location, f"bench-{len(spans)}", BATCHES, BATCH))

    benchmark.pedantic(write, rounds=5, warmup_rounds=0)
    for number in range(len(spans)):
        assert_no_sample_lost(location, f"bench-{number}", BATCHES, BATCH)
    rate = WRITERS * BATCHES * BATCH / statistics.median(spans)
    benchmark.extra_info["samples_per_s"] = rate
    print(f"\n{WRITERS} writers, {'PostgreSQL' if isinstance(location, str) else 'SQLite'}: {rate:.0f} samples/s, "
          f"{WRITERS * BATCHES / statistics.median(spans):.0f} transactions/s (median of {len(spans)} rounds), none lost")
