"""The accuracy suite: its items, its scores, and slices of it run for real (the reference engine
on the local target and an emulated phone, Gemma 3 270M through llama.cpp, and a planted
degradation that the grid must show in the one language it hits)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from harness.analysis.budgets import evaluate
from harness.measure import scores
from harness.spec.suite import load_suite
from tests.conftest import REPO

SUITE = REPO / "fixtures" / "accuracy"
pytestmark = pytest.mark.usefixtures("no_real_adb_server")


def test_suite_has_every_language_and_task_with_enough_items_for_an_interval() -> None:
    prompts = load_suite(SUITE, instruct=True)
    cells = Counter((p.language, p.kind) for p in prompts)
    assert len({p.language for p in prompts}) == 9 and len({p.kind for p in prompts}) == 8
    assert len(cells) == 72 and min(cells.values()) >= 5
    assert len({p.id for p in prompts}) == len(prompts)
    for p in prompts:
        assert p.template == "chat" and p.reference and p.scores
        if p.kind == "qa":
            assert p.reference in p.prompt  # answers are spans of their passage


def test_a_base_model_gets_raw_prompts_ending_with_the_answer_cue() -> None:
    [prompt] = load_suite(SUITE, instruct=False, languages=["ko"], tasks=["translate"], items_per_cell=1)
    assert prompt.template == "raw" and prompt.prompt.endswith("Korean translation:")
    assert "Translate the following text into Korean" in prompt.prompt


def test_scores_are_the_libraries_on_the_text() -> None:
    assert scores.chrf("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(100.0)
    assert 0 < scores.chrf("the cat sat", "the cat sat on the mat") < 100
    assert scores.qa_f1("Paris.", "paris") == 1.0 and scores.qa_f1("in Lyon", "Paris") == 0.0
    assert scores.qa_f1("东京都", "东京") == pytest.approx(0.8)  # characters: 2 of 3 and 2 of 2
    for text, language in (("오늘 회의는 오후 세 시로 옮겨졌습니다.", "ko"), ("कल सुबह बारिश होगी।", "hi"),
                           ("明日の会議は午後三時に変更になりました。", "ja"), ("Die Sitzung wurde auf Donnerstag verschoben.", "de")):
        assert scores.language_match(text, language) == 1.0
    assert scores.language_match("The meeting moved to Thursday.", "ko") == 0.0
    assert scores.language_match("", "en") == 0.0


def test_every_longer_reference_is_identified_as_its_language() -> None:
    """The language score's own check on our data: what it says of the references themselves
    (titles and QA spans are too short to identify, and their tasks do not score it)."""
    for prompt in load_suite(SUITE, instruct=True):
        if "language_match" in prompt.scores:
            assert scores.language_match(prompt.reference, prompt.language) == 1.0, prompt.id


def test_top1_agreement_counts_a_tie_as_agreeing() -> None:
    import torch

    from harness.engine.fidelity import same_top

    q = torch.tensor([[0.1, 0.4, 0.4, 0.1], [0.7, 0.1, 0.1, 0.1]]).log()
    assert same_top(q, torch.tensor([2, 0])).tolist() == [True, True]  # argmax says 1 for the first row
    assert same_top(q, torch.tensor([3, 1])).tolist() == [False, False]


def _slice(folder: Path, **fields) -> Path:
    scenario = {
        "name": "accuracy-slice",
        "variants": {"precision": ["fp32", "int4"], "include": [
            {"precision": "fp32", "adapters": ["formal"], "lora_mode": "merged"},
            {"precision": "fp32", "adapters": ["formal"]}]},
        "baseline": {"precision": "fp32", "adapters": []},
        "adapter_baseline": {"adapters": ["formal"], "lora_mode": "merged"},
        "workload": {"suite": str(SUITE), "languages": ["en", "ko"], "tasks": ["translate", "qa"],
                     "items_per_cell": 2, "max_new_tokens": 8, "repetitions": 1, "warmup": 0},
        "adapters_dir": str(REPO / "fixtures" / "adapters"),
        "budgets": [{"metric": "tf_top1_agreement", "variant": {"precision": "int4"}, "per": "language", "min": 0.5},
                    {"metric": "tf_top1_agreement", "variant": {"lora_mode": "runtime", "adapters": ["formal"]},
                     "per": "language", "min": 0.9}],
        **fields,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))
    return path


def _run(path: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    import os
    import subprocess
    import sys

    out = path.parent / "results.json"
    process = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(path), "--db", str(path.parent / "r.sqlite"),
                              "--json", str(out), "--report", str(path.parent / "report.html"), *args],
                             cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})})
    assert process.returncode in (0, 1), process.stderr[-2000:]
    return json.loads(out.read_text())


def _cell(document: dict, variant: str, target: str, language: str, task: str, metric: str, stat: str) -> dict:
    [entry] = [e for e in document["accuracy"] if e["variant"] == variant and e["target"]["kind"] == target]
    [cell] = [c for c in entry["cells"] if (c["language"], c["task"], c["metric"], c["stat"]) == (language, task, metric, stat)]
    return cell


@pytest.fixture(scope="module")
def slice_run(server, tmp_path_factory) -> dict:
    path = _slice(tmp_path_factory.mktemp("accuracy"), targets=["local", "adb:emu-galaxy-s25"])
    return _run(path)


def test_the_slice_runs_on_the_local_target_and_an_emulated_phone(slice_run: dict) -> None:
    assert all(r["status"] == "ok" for r in slice_run["results"])
    compared = {(e["variant"], e["against"], e["target"]["kind"]) for e in slice_run["accuracy"]}
    assert compared == {(v, against, kind) for kind in ("local", "adb")
                        for v, against in (("int4-s1-greedy", "fp32-s1-greedy"),
                                           ("fp32-s1-greedy-formal", "fp32-s1-greedy-formal-merged"))}
    for kind in ("local", "adb"):
        # adapters as runtime inputs compute what merged weights do, up to rounding
        runtime = _cell(slice_run, "fp32-s1-greedy-formal", kind, "ko", "all", "tf_top1_agreement", "mean")
        assert runtime["value"] == 1.0 and runtime["n"] == 4
        kld = _cell(slice_run, "int4-s1-greedy", kind, "en", "all", "tf_kld", "mean")
        assert 0 < kld["value"] < 0.1 and kld["interval"][0] <= kld["value"] <= kld["interval"][1]
        chrf = _cell(slice_run, "int4-s1-greedy", kind, "ko", "translate", "chrf", "delta")
        assert chrf["n"] == 2 and chrf["value"] == pytest.approx(chrf["variant_mean"] - chrf["against_mean"])


def test_per_language_budgets_judge_each_language(slice_run: dict) -> None:
    verdicts = [v for v in evaluate(slice_run) if v.where]
    assert {(v.variant, v.where) for v in verdicts if v.target == "local"} == {
        (variant, (language, "all")) for variant in ("int4-s1-greedy", "fp32-s1-greedy-formal") for language in ("en", "ko")}
    assert all(v.outcome == "pass" for v in verdicts if v.variant == "fp32-s1-greedy-formal")


def test_the_report_shows_the_grid(slice_run: dict, tmp_path: Path) -> None:
    from harness.output.report.html import render_html

    html = render_html(slice_run)
    assert "Accuracy by language and task" in html and "int4-s1-greedy vs fp32-s1-greedy" in html
    assert html.count('<table class="grid">') >= 2 * 2 * 5  # comparisons x targets x (4 task scores + fidelity)


def test_a_planted_degradation_shows_in_the_language_it_hits(tmp_path: Path) -> None:
    """Noise on the embeddings of the tokens only the Korean items use: the Korean rows of the
    grid must lose, the English ones must not, and the per-language budget must say so."""
    path = _slice(tmp_path, variants={"precision": ["fp32"], "decoding": ["greedy", "ds2d"]},
                  baseline={"decoding": "greedy"}, adapter_baseline=None,
                  budgets=[{"metric": "tf_top1_agreement", "variant": {"decoding": "ds2d"}, "per": "language",
                            "min": 0.9}])
    document = _run(path, env={"HARNESS_TEST_PERTURB_LANGUAGE": "ko"})
    assert document["environment"]["test_perturb_language"] == "ko"
    ko = _cell(document, "fp32-s1-ds2d", "local", "ko", "all", "tf_kld", "mean")
    en = _cell(document, "fp32-s1-ds2d", "local", "en", "all", "tf_kld", "mean")
    assert ko["interval"][0] > 10 * en["interval"][1]
    verdicts = {v.where[0]: v.outcome for v in evaluate(document) if v.where}
    assert verdicts == {"ko": "fail", "en": "pass"}


def test_gemma_through_llama_cpp_scores_fidelity_with_llama_perplexity(tmp_path: Path) -> None:
    path = _slice(tmp_path, model="gemma3-270m",
                  variants={"precision": ["fp16", "int4"], "runtime": ["llamacpp"],
                            "include": [{"precision": "fp16", "runtime": "llamacpp", "decoding": "lookup"}]},
                  baseline={"precision": "fp16", "decoding": "greedy"}, adapter_baseline=None,
                  workload={"suite": str(SUITE), "languages": ["en", "hi"], "tasks": ["summarize"],
                            "items_per_cell": 3, "max_new_tokens": 8, "repetitions": 1, "warmup": 0},
                  budgets=[{"metric": "tf_top1_agreement", "variant": {"precision": "int4"}, "per": "cell", "min": 0.5}])
    document = _run(path)
    assert all(r["status"] == "ok" for r in document["results"])
    [int4] = [r for r in document["results"] if r["variant"]["precision"] == "int4"]
    records = [j for j in int4["jobs"] if j.get("kind") == "kl_divergence"]
    assert {(r["language"], r["task"]) for r in records} == {("en", "summarize"), ("hi", "summarize")}
    assert all(r["tool"] == "llama-perplexity" and r["positions"] > 0 for r in records)
    top1 = _cell(document, "int4-s1-greedy-llamacpp", "local", "hi", "summarize", "tf_top1_agreement", "mean")
    assert 0.5 < top1["value"] <= 1 and top1["basis"].startswith("llama-perplexity")
    assert _cell(document, "int4-s1-greedy-llamacpp", "local", "hi", "summarize", "chrf", "delta")["n"] == 3
    # llama-lookup echoes "<bos>" and the prompt, and may overshoot the limit: what is left is greedy's text
    texts = {r["variant"]["decoding"]: {o["prompt_id"]: o["text"] for o in r["outputs"]}
             for r in document["results"] if r["variant"]["precision"] == "fp16"}
    assert texts["lookup"] == texts["greedy"]
    lookup = _cell(document, "fp16-s1-lookup-llamacpp", "local", "all", "summarize", "chrf", "delta")
    assert lookup["value"] == 0.0 and lookup["n"] == 6
