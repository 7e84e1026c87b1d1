"""The HTML report: the knob banner, trends, and its size at scale (escaping and the headline: test_end_to_end)."""

from __future__ import annotations

from conftest import harness


def test_report_of_a_slowed_run_says_so_and_charts_the_trend(compare_runs, tmp_path) -> None:
    out = tmp_path / "slowed.html"
    done = harness("report", compare_runs.slowed["run_id"], "--db", str(compare_runs.db), "--out", str(out))
    assert done.returncode == 0, done.stderr
    html = out.read_text()
    assert "Slowed on purpose" in html and f"HARNESS_TEST_DELAY_MS_PER_TOKEN = {compare_runs.delay_ms:g}" in html
    trends = html[html.index("<h2>Trends over earlier runs</h2>"):html.index("<h2>Metrics</h2>")]
    assert 'alt="trend of decode_tokens_per_s"' in trends
    assert f"{compare_runs.slowed['run_id']}: regressed" in trends


def test_report_stays_bounded_at_50_variants_and_100_runs(wide_store, tmp_path) -> None:
    out = tmp_path / "wide.html"
    done = harness("report", "--db", str(wide_store), "--out", str(out))
    assert done.returncode == 0, done.stderr
    html = out.read_text()
    assert len(html) < 3_000_000  # tables, not fifty-row charts
    assert "More than 16 variant x target results" in html
    assert "<details><summary>50 variant x target results</summary>" in html  # folded
    assert "&lt;b&gt;text&lt;/b&gt;" in html and "<b>text" not in html
    steps = html[html.index("<h3>Step changes</h3>"):html.index("Every series")]
    assert steps.count("<tr>") == 3  # a header and the two planted steps
    assert "fp32-s1-greedy" in steps and "decode_tokens_per_s" in steps
    assert "fp32-s2-greedy" in steps and "peak_rss_bytes" in steps
    # too many series for one chart: each chart keeps the one that stepped
    trends = html[html.index("<h2>Trends over earlier runs</h2>"):html.index("<h3>Step changes</h3>")]
    assert trends.count("<img") == 2
    assert 'alt="trend of decode_tokens_per_s"' in trends and 'alt="trend of peak_rss_bytes"' in trends
    assert trends.count("1 of 50 series: those with a step change") == 2
