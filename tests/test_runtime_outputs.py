"""Native runtimes' output parsers, on real published outputs (tests/data/runtimes/, each with
a `.source.md` naming where it was published) and on outputs cut short or garbled; and the
Genie dialog configs made from real published configs.

The expected counters are the tools' own printed figures: llama.cpp's "tokens per second"
in its timing lines, ExecuTorch's human-readable stats lines next to its JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.runtimes import executorch, genie, llamacpp
from harness.runtimes.report import ToolOutputError
from harness.spec.variant import Variant

DATA = Path(__file__).parent / "data" / "runtimes"
SAMPLES = sorted(p.stem for p in DATA.glob("*.txt"))
HOST_RUN = "llamacpp_completion_host_0c1e570"  # our own build's run: its stdout and stderr apart
KL_RUN = "llama_perplexity_kl_divergence_gemma3_270m"  # our own build's llama-perplexity --kl-divergence


def sample(name: str) -> str:
    return (DATA / f"{name}.txt").read_text(encoding="utf-8")


# name -> (llama.cpp tool, counters as printed: load ms, prompt eval tokens/s, decode tokens/s)
LLAMACPP = {
    "llamacpp_common_perf_print_android_htp_s25": ("completion", {"load_ms": 971.88, "prefill_tokens_per_s": 52.81,
                                                                  "decode_tokens_per_s": 15.18}),
    "llamacpp_common_perf_print_pr17382_intro": ("completion", {"load_ms": 1226.89, "prefill_tokens_per_s": 420.28,
                                                                "decode_tokens_per_s": 105.30}),
    "llamacpp_perf_context_hexagon_android_llama1b": ("completion", {"load_ms": 617.94, "prefill_tokens_per_s": 136.21,
                                                                     "decode_tokens_per_s": 51.57}),
    # the author left out the load line: no load_ms
    "llamacpp_perf_context_hexagon_android_olmoe_noload": ("completion", {"prefill_tokens_per_s": 122.50,
                                                                          "decode_tokens_per_s": 45.69}),
    "llamacpp_perf_context_orangepi3b_rk3566_arm64": ("completion", {"load_ms": 4450.58, "prefill_tokens_per_s": 1.88,
                                                                     "decode_tokens_per_s": 1.02}),
    "llamacpp_perf_context_issue9013_interrupted": ("completion", {"load_ms": 618.92, "prefill_tokens_per_s": 52.85,
                                                                   "decode_tokens_per_s": 12.64}),
    "llamacpp_print_timings_issue9353_b3678_total_tokens": ("completion", {"load_ms": 1933.61,
                                                                           "prefill_tokens_per_s": 53.37,
                                                                           "decode_tokens_per_s": 48.57}),
    # K sequences in one batch: its decoded line sums the streams, so no per-request decode rate;
    # libllama counts each K-token step as prompt eval too, so no prefill rate either
    "llamacpp_batched_readme_print_timings": ("batched", {"load_ms": 587.00, "batch_decode_tokens_per_s": 30.26}),
    "llamacpp_lookahead_pr4207_print_timings": ("lookahead", {"load_ms": 1009.26, "prefill_tokens_per_s": 816.60,
                                                              "decode_tokens_per_s": 17.63,
                                                              "accepted_tokens": 0}),
}
# name -> counters as its stats lines print them (seconds there, ms here)
EXECUTORCH = {
    "executorch_llama_main_vulkan_galaxy_s24_old_observer": {
        "load_ms": 2277, "ttft_ms": 164, "prefill_tokens_per_s": 85.365854, "decode_tokens_per_s": 52.682927,
        "e2e_ms": 1189},
    "executorch_qnn_llama_runner_pr7175_old_observer": {
        "load_ms": 887, "ttft_ms": 56, "prefill_tokens_per_s": 553.571429, "decode_tokens_per_s": 53.993251,
        "e2e_ms": 1834},
    # a runner that does not time the load prints 0 to 0: no load_ms
    "executorch_voxtral_runner_observer_with_stats_log": {
        "ttft_ms": 5054, "prefill_tokens_per_s": 76.770875, "decode_tokens_per_s": 8.865407, "e2e_ms": 16221},
}
GENIE = {
    "genie_t2t_run_aihubapps_readme_v1.1.0": ("1.1.0", "\\n\\nFrance's capital is Paris."),
    "genie_t2t_run_v1.0.0_issue80_s23ultra": ("1.0.0", "'s5Gmodem\nhopefully"),
}
# published without any timing line (the author kept only the draft statistics)
WITHOUT_TIMINGS = {"llamacpp_lookup_pr5450_old_stats"}


def test_every_sample_names_its_source_and_is_checked() -> None:
    sources = {name.removesuffix("_stdout").removesuffix("_stderr") for name in SAMPLES}
    assert sources and all((DATA / f"{name}.source.md").is_file() for name in sources)
    assert sources == set(LLAMACPP) | set(EXECUTORCH) | set(GENIE) | WITHOUT_TIMINGS | {
        HOST_RUN, "llamacpp_version_host_0c1e570", KL_RUN}


@pytest.mark.parametrize("name", sorted(LLAMACPP))
def test_llamacpp_counters_are_the_printed_figures(name: str) -> None:
    tool, expected = LLAMACPP[name]
    text = sample(name)  # published as one terminal: stdout and stderr together
    report = llamacpp.parse(tool, text, text)
    assert report.counters == pytest.approx(expected, rel=2e-3, abs=0.006)  # printed rounded to 0.01
    assert set(report.sources) == set(report.counters)
    assert all(source.startswith(f"llama-{tool}: ") for source in report.sources.values())


def test_llamacpp_reads_every_prefix_and_its_tool_statistics() -> None:
    s25 = llamacpp.parse("completion", "", sample("llamacpp_common_perf_print_android_htp_s25"))
    assert s25.fields["total time ms"] == 76849.02 and s25.fields["eval runs"] == 1156
    lookahead = llamacpp.parse("lookahead", "", sample("llamacpp_lookahead_pr4207_print_timings"))
    assert {k: lookahead.fields[k] for k in ("n_predict", "n_accept", "decoded tokens")} == \
        {"n_predict": 1, "n_accept": 0, "decoded tokens": 1}
    batched = sample("llamacpp_batched_readme_print_timings")
    report = llamacpp.parse("batched", batched, batched)
    assert len(report.texts) == 4 and report.texts[3].startswith("Hello my name is Cody.")
    assert report.fields["decoded tokens"] == 108 and "decode_tokens_per_s" not in report.counters


def test_llamacpp_host_run_with_the_log_prefix() -> None:
    # stderr lines start "0.01.110.506 I " (common_init's default); the text is stdout alone
    report = llamacpp.parse("completion", sample(f"{HOST_RUN}_stdout"), sample(f"{HOST_RUN}_stderr"))
    assert report.counters == pytest.approx({"load_ms": 515.06, "prefill_tokens_per_s": 85.34,
                                             "decode_tokens_per_s": 58.95}, rel=2e-3)
    assert report.texts[0].startswith(" Paris.") and report.fields["eval runs"] == 15
    assert llamacpp.version(sample("llamacpp_version_host_0c1e570")) == "0.5.0-dev (build 1, commit 0c1e570)"


@pytest.mark.parametrize("name", sorted(EXECUTORCH))
def test_executorch_counters_are_its_stats_lines(name: str) -> None:
    report = executorch.parse(sample(name), "")
    assert report.counters == pytest.approx(EXECUTORCH[name], rel=1e-5)
    assert set(report.sources) == set(report.counters)


@pytest.mark.parametrize("name", sorted(GENIE))
def test_genie_version_and_text(name: str) -> None:
    version, text = GENIE[name]
    report = genie.parse(sample(name), "")
    assert report.version == version and report.texts[0].startswith(text) and report.counters == {}


def test_genie_1_0_kpi_lines_are_kept_as_fields() -> None:
    report = genie.parse(sample("genie_t2t_run_v1.0.0_issue80_s23ultra"), "")
    assert report.fields == {"prompt processing us": 2281999, "token generation us": 353360439,
                             "token generation tokens/s": 0.464115}


def cut(text: str, before: str) -> str:
    return text[: text.index(before)]


@pytest.mark.parametrize("parse, output", [
    (lambda out, err: llamacpp.parse("completion", out, err),
     cut(sample("llamacpp_common_perf_print_android_htp_s25"), "common_perf_print:        eval time")),
    (lambda out, err: llamacpp.parse("lookup", out, err), sample("llamacpp_lookup_pr5450_old_stats")),
    (lambda out, err: llamacpp.parse("completion", out, err), "\x00\x17\xff garbage"),
    (executorch.parse, cut(sample("executorch_qnn_llama_runner_pr7175_old_observer"), ',"inference_end_ms"')),
    (executorch.parse, "PyTorchObserver {not json}\n"),
    (genie.parse, cut(sample("genie_t2t_run_aihubapps_readme_v1.1.0"), "[END]")),
    (genie.parse, ""),
], ids=["llamacpp-cut", "llamacpp-no-timings", "llamacpp-garbage", "executorch-cut", "executorch-garbled",
        "genie-cut", "genie-empty"])
def test_cut_or_garbled_output_is_an_error_with_the_last_stderr_lines(parse, output: str) -> None:
    # the tool died while printing: what it printed, then the shell's crash line, on both streams
    printed = output + "\nSegmentation fault (core dumped)"
    with pytest.raises(ToolOutputError, match=r"(?s)crashed, cut short or garbled.*Segmentation fault") as error:
        parse(printed, printed)
    assert "Traceback" not in str(error.value)


# -- how Genie and ExecuTorch are given a variant: real configs in, the variant's out ----------

GENIE_BASIC = json.loads((DATA / "genie_config_llama_v3_2_1b_aihubapps.json").read_text())
GENIE_SSD = json.loads((DATA / "genie_config_llama2_7b_htp_ssd_qairt.json").read_text())


def test_genie_dialog_config_per_variant_from_an_ai_hub_bundle() -> None:
    basic = genie.dialog_config(GENIE_BASIC, Variant("int4", runtime="genie"), "/m")["dialog"]
    assert basic["type"] == "basic" and basic["sampler"]["greedy"] is True
    assert basic["tokenizer"]["path"] == "/m/tokenizer.json"
    assert basic["engine"]["model"]["binary"]["ctx-bins"][0] == "/m/llama_v3_2_1b_instruct_part_1_of_3.bin"
    assert basic["engine"]["backend"]["extensions"] == "/m/htp_backend_ext_config.json"
    streams = genie.dialog_config(GENIE_BASIC, Variant("int4", streams=3, runtime="genie"), "/m")["dialog"]
    assert streams["type"] == "multistream" and streams["multistream"] == {"version": 1, "n-streams": 3,
                                                                           "p-threshold": 0}
    assert GENIE_BASIC["dialog"]["type"] == "basic" and "multistream" not in GENIE_BASIC["dialog"]  # not changed


def test_genie_ssd_keeps_the_models_forecast_settings_and_needs_them() -> None:
    ssd = genie.dialog_config(GENIE_SSD, Variant("int4", decoding="ssd", runtime="genie"), "/m")["dialog"]
    assert ssd["type"] == "ssd-q1" and ssd["ssd-q1"] == GENIE_SSD["dialog"]["ssd-q1"]
    assert "ssd-q1" not in genie.dialog_config(GENIE_SSD, Variant("int4", runtime="genie"), "/m")["dialog"]
    with pytest.raises(genie.ConfigError, match="needs an ssd-q1 section"):
        genie.dialog_config(GENIE_BASIC, Variant("int4", decoding="ssd", runtime="genie"), "/m")
    with pytest.raises(genie.ConfigError, match="LoRA adapters formal are not in"):
        genie.dialog_config(GENIE_BASIC, Variant("int4", adapters=("formal",), runtime="genie"), "/m")


def test_genie_htp_libraries_follow_the_soc() -> None:
    assert (genie.hexagon_arch("SM8650"), genie.hexagon_arch("SM8750")) == ("v75", "v79")
    with pytest.raises(genie.ConfigError, match="no Hexagon architecture known for SoC 'SM8550'"):
        genie.hexagon_arch("SM8550")


def test_executorch_text_is_what_follows_the_echoed_prompt() -> None:
    out = sample("executorch_llama_main_vulkan_galaxy_s24_old_observer")
    prompt = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>Write me a short poem.<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>")
    report = executorch.parse(out, "", prompt, "<|eot_id|>")
    assert report.texts == [report.texts[0]] and report.texts[0].startswith("\n\nHere is a short poem")
    assert report.texts[0].endswith("I hope you enjoy it!") and report.fields["end of text"] == 1.0


def test_llama_perplexity_kl_divergence_summary() -> None:
    values = llamacpp.parse_kl_divergence(sample(KL_RUN))
    assert values == pytest.approx({"kld_mean": 0.395209, "kld_mean_se": 0.024062, "kld_p99": 1.454247,
                                    "same_top_p": 0.62581, "same_top_p_se": 0.03899, "ppl_ratio": 1.396105,
                                    "ppl_ratio_se": 0.104596, "positions": 5 * 31})  # 5 chunks of 64: 31 scored each


def test_llama_perplexity_without_its_statistics_is_garbled() -> None:
    # below 100 scored positions the tool prints its chunk table and no statistics
    cut = sample(KL_RUN).split("====== Perplexity statistics")[0]
    with pytest.raises(ToolOutputError, match="llama-perplexity: no kld_mean line"):
        llamacpp.parse_kl_divergence(cut)


def test_llama_perplexity_of_a_model_against_itself_prints_no_error() -> None:
    same = sample(KL_RUN).replace("1.396105 ±   0.104596", "1.000000 ±        nan")
    values = llamacpp.parse_kl_divergence(same)
    assert values["ppl_ratio"] == 1.0 and "ppl_ratio_se" not in values
