"""`harness run scenarios/smoke.yaml` for real: every counter, the documented JSON, the report
(its escaping and headline too: the tests that read the smoke run live in this one file, so
under pytest-xdist's --dist loadfile the run is made once)."""

from __future__ import annotations

import copy

import pytest

from conftest import harness
from harness.measure.metrics import METRICS
from harness.output.report import render_html

# Every counter a plain greedy variant reports (technique counters need DS2D, adapters or streams).
CORE = ["load_ms", "ttft_ms", "prefill_tokens_per_s", "decode_tokens_per_s", "itl_ms", "e2e_ms", "peak_rss_bytes",
        "weights_bytes", "kv_cache_bytes", "exact_match", "agreement_with_baseline", "kld_vs_baseline"]
SUMMARY_KEYS = {"unit", "median", "mean", "stdev", "ci95", "n", "samples", "sample_repetitions", "sample_prompts",
                "estimate", "interval", "interval_kind", "processes", "requests"}
SCOPE_REQUESTS = {"process": 0, "request": 6, "token": 6}  # 3 processes x 2 prompts (1 with a reference)


def test_smoke_run_exits_0(smoke_run) -> None:
    assert smoke_run.process.returncode == 0, smoke_run.process.stderr[-2000:]


def test_smoke_budgets_are_met(smoke_run) -> None:
    """What `pytest scenarios/smoke.yaml` would check, read from the same run: every budget passed."""
    verdicts = [line for line in smoke_run.process.stderr.splitlines() if line.startswith("budget: ")]
    assert len(verdicts) == 2 and all(line.endswith(": pass") for line in verdicts), verdicts


def test_json_has_the_documented_names(smoke_run) -> None:
    doc = smoke_run.document
    assert {"run_id", "scenario", "started_at", "environment", "results"} <= doc.keys()
    assert doc["environment"]["git_commit"] is None or len(doc["environment"]["git_commit"]) >= 40
    assert len(doc["results"]) == 2
    for result in doc["results"]:
        assert result["status"] == "ok"
        assert set(result["variant"]) == {"precision", "streams", "decoding", "adapters", "lora_mode", "prefill", "graph",
                                          "runtime", "drafter"}
        assert set(result["target"]) == {"kind", "name", "serial", "model", "soc", "emulated"}
        assert result["target"]["kind"] == "local" and result["target"]["emulated"] is False
        assert {o["prompt_id"] for o in result["outputs"]} == {"capital-france", "continue-raw"}
        assert all(o["text"] and o["token_ids"] for o in result["outputs"])


@pytest.mark.parametrize("name", CORE)
def test_every_counter_has_at_least_3_samples(smoke_run, name: str) -> None:
    for result in smoke_run.document["results"]:
        if name == "kld_vs_baseline" and result["variant"]["precision"] == "fp32":
            continue  # the baseline is not scored against itself
        metric = result["metrics"][name]
        assert SUMMARY_KEYS <= metric.keys()
        assert metric["n"] == len(metric["samples"]) == len(metric["sample_repetitions"]) >= 3
        assert metric["unit"] == METRICS[name].unit
        # 3 runner processes: the interval is their range, never called a 95 % interval
        assert (metric["processes"], metric["interval_kind"], metric["ci95"]) == (3, "range", None)
        assert set(metric["sample_repetitions"]) == {0, 1, 2}
        assert metric["requests"] == (3 if name == "exact_match" else SCOPE_REQUESTS[METRICS[name].scope])
        lo, hi = metric["interval"]
        assert min(metric["samples"]) <= lo <= metric["estimate"] <= hi <= max(metric["samples"])


def test_measurements_are_plausible(smoke_run) -> None:
    fp32, fp16 = (r["metrics"] for r in smoke_run.document["results"])
    assert fp16["weights_bytes"]["median"] == pytest.approx(fp32["weights_bytes"]["median"] / 2, rel=0.01)
    for m in (fp32, fp16):
        assert m["peak_rss_bytes"]["median"] > m["weights_bytes"]["median"] + m["kv_cache_bytes"]["median"]
        assert m["e2e_ms"]["median"] > m["ttft_ms"]["median"] > 0
        assert m["agreement_with_baseline"]["median"] > 0.9
        assert m["exact_match"]["mean"] == 1.0  # "Paris" for the capital of France
    assert fp32["agreement_with_baseline"]["samples"] == [1.0] * 6
    assert 0 <= fp16["kld_vs_baseline"]["median"] < 0.01  # fp16 weights barely move the distributions


def test_report_and_list_read_the_store(smoke_run, tmp_path) -> None:
    html = smoke_run.html.read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert "weights_bytes" in html and "data:image/png;base64," in html
    run_id = smoke_run.document["run_id"]
    listed = harness("list", "--db", str(smoke_run.db))
    assert listed.returncode == 0 and run_id in listed.stdout
    again = harness("report", run_id, "--db", str(smoke_run.db), "--out", str(tmp_path / "r.html"))
    assert again.returncode == 0 and (tmp_path / "r.html").read_text().count("<table") >= 3
    missing = harness("report", "nope", "--db", str(smoke_run.db))
    assert missing.returncode == 2 and "no run 'nope'" in missing.stderr


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
