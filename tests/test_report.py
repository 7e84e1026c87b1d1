"""The HTML report: escaping, the headline, the knob banner, trends, and its size at scale."""

from __future__ import annotations

import copy

from conftest import DELAY_MS, harness
from harness.output.report import render_html

EVIL = "<script>alert('x')</script>"


def test_text_from_outputs_and_errors_is_escaped(smoke_run) -> None:
    doc = copy.deepcopy(smoke_run.document)
    doc["results"][0]["outputs"][0]["text"] = EVIL
    doc["results"][1]["status"] = "failed"
    doc["results"][1]["error"] = EVIL
    doc["environment"]["hostname"] = EVIL
    html = render_html(doc)
    assert "<script" not in html
    escaped = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"
    outputs_table = html[html.index("<h2>Outputs</h2>"):]
    environment_table = html[html.index("<h2>Environment</h2>"):]
    assert escaped in outputs_table and escaped in environment_table
    assert f"failed: {escaped}" in html


def test_headline_shows_the_declared_comparison(smoke_run) -> None:
    html = smoke_run.html.read_text()
    headline = html[html.index("<h2>Headline</h2>"):html.index("<h2>Budgets</h2>")]
    assert "fp16-s1-greedy vs fp32-s1-greedy" in headline and "weights_bytes" in headline
    assert "&lt;= 0.55x" in headline and ">pass<" in headline
    # a counter that is itself a comparison is one too: fp16's agreement with the baseline's tokens
    assert "agreement_with_baseline" in headline and "fp16-s1-greedy vs fp32-s1-greedy (baseline)" in headline


def test_report_of_a_slowed_run_says_so_and_charts_the_trend(compare_runs, tmp_path) -> None:
    out = tmp_path / "slowed.html"
    done = harness("report", compare_runs.slowed["run_id"], "--db", str(compare_runs.db), "--out", str(out))
    assert done.returncode == 0, done.stderr
    html = out.read_text()
    assert "Slowed on purpose" in html and f"HARNESS_TEST_DELAY_MS_PER_TOKEN = {DELAY_MS:g}" in html
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
    assert steps.count("<tr>") == 2 and "fp32-s1-greedy" in steps and "decode_tokens_per_s" in steps
    # too many series for one chart: the chart keeps the one that stepped
    trends = html[html.index("<h2>Trends over earlier runs</h2>"):html.index("<h3>Step changes</h3>")]
    assert trends.count("<img") == 1 and 'alt="trend of decode_tokens_per_s"' in trends
    assert "1 of 50 series: those with a step change" in trends
