"""Qualcomm Genie's `genie-t2t-run`: reading what it prints to stdout.

    Using libGenie.so version 1.1.0
    [PROMPT]: <the prompt>
    [BEGIN]: <the generated text, possibly over several lines>[END]

libGenie 1.0.0 also printed `Prompt processing: N us` and `Token generation: N us, R
tokens/s` after `[END]`; they are kept as fields. Which tokens those lines count is not
documented, so they give no counter. Its `--profile` JSON has the KPIs (init time, TTFT,
rates, acceptance, LoRA switching), but no published sample of it was found to test a
reader on, so none is read yet.

How it serves a variant (`dialog_config`, `command`): the user's model folder holds an AI
Hub Genie bundle whose `genie_config.json` is the base; each variant gets a copy with its
dialog type (`basic`; `ssd-q1`, whose forecast-prefix settings belong to the exported model
and so must be in the base; `multistream` with n-streams K), a greedy sampler and the
model's files at their device paths. LoRA adapters are the bundle's, switched with `-l`.
Dialog.cpp (QAIRT examples) rejects unknown keys: only keys it validates are written.
"""

from __future__ import annotations

import json
import re

from harness.runtimes.report import ToolOutputError, ToolReport
from harness.spec.variant import Variant

DIALOGS = {"greedy": "basic", "ssd": "ssd-q1"}  # one stream; K streams: the "multistream" dialog

_VERSION = re.compile(r"^Using libGenie\.so version (\S+)", re.M)
_TEXT = re.compile(r"^\[BEGIN\]: (.*?)\[END\]", re.M | re.S)
_KPI = re.compile(r"^(?P<name>Prompt processing|Token generation): (?P<us>\d+) us(?:, (?P<rate>[\d.]+) tokens/s)?",
                  re.M)


HEXAGON = {"SM8650": "v75", "SM8750": "v79"}  # Snapdragon 8 Gen 3, 8 Elite: their HTP architecture


class ConfigError(ValueError):
    """A Genie model folder's config that cannot serve the variant."""


def hexagon_arch(soc: str | None) -> str:
    if soc not in HEXAGON:
        raise ConfigError(f"no Hexagon architecture known for SoC {soc!r}; known: "
                          f"{', '.join(f'{k} ({v})' for k, v in HEXAGON.items())}")
    return HEXAGON[soc]


def dialog_config(base: dict, variant: Variant, models_dir: str) -> dict:
    """The variant's dialog config from the bundle's `base`, file paths under `models_dir`."""
    config = json.loads(json.dumps(base))  # a deep copy
    dialog = config["dialog"]
    dialog.pop("multistream", None)
    if variant.decoding != "ssd":
        dialog.pop("ssd-q1", None)
    if variant.streams > 1:
        dialog["type"] = "multistream"
        dialog["multistream"] = {"version": 1, "n-streams": variant.streams, "p-threshold": 0}
    elif variant.decoding == "ssd":
        if "ssd-q1" not in dialog:
            raise ConfigError("decoding 'ssd' needs an ssd-q1 section in the model folder's genie_config.json "
                              "(its forecast prefix is exported with the model)")
        dialog["type"] = "ssd-q1"
    else:
        dialog["type"] = "basic"
    dialog["sampler"]["greedy"] = True
    dialog["tokenizer"]["path"] = f"{models_dir}/{dialog['tokenizer']['path']}"
    engine = dialog["engine"]
    if "extensions" in engine["backend"]:
        engine["backend"]["extensions"] = f"{models_dir}/{engine['backend']['extensions']}"
    binary = engine["model"]["binary"]
    binary["ctx-bins"] = [f"{models_dir}/{name}" for name in binary["ctx-bins"]]
    adapters = {a["name"]: a for a in binary.get("lora", {}).get("adapters", [])}
    if missing := [name for name in variant.adapters if name not in adapters]:
        raise ConfigError(f"LoRA adapters {', '.join(missing)} are not in the model folder's genie_config.json; "
                          f"it has: {', '.join(adapters) or 'none'}")
    for adapter in adapters.values():
        adapter["bin-sections"] = [f"{models_dir}/{name}" for name in adapter["bin-sections"]]
    return config


def command(config: str, prompt: str, adapter: str | None) -> list[str]:
    """genie-t2t-run's argv for one prompt, through `adapter` when given."""
    return ["genie/bin/genie-t2t-run", "-c", config, "-p", prompt] + (["-l", adapter] if adapter else [])


def problem(variant: Variant) -> str | None:
    """Why a Genie dialog cannot serve `variant`, or None. Genie runs the user's QNN context
    binaries: their precision is what they were compiled with (fp16 or int4, not fp32)."""
    if variant.decoding not in DIALOGS:
        return f"no decoding {variant.decoding!r}; its dialogs serve {', '.join(DIALOGS)} (ssd: ssd-q1)"
    if variant.streams > 1 and variant.decoding != "greedy":
        return f"its multistream dialog decodes greedily; decoding {variant.decoding!r} runs one stream"
    if variant.streams > 1 and variant.adapters:
        return "switches LoRA adapters per dialog (-l), not per stream of a multistream dialog"
    if variant.precision == "fp32":
        return "runs QNN context binaries compiled for fp16 or int4, not fp32"
    if variant.lora_mode != "runtime" or variant.graph != "eager":
        return "serves lora_mode 'runtime' and graph 'eager' (its graph is the compiled context binary)"
    return None


def parse(stdout: str, stderr: str) -> ToolReport:
    text = _TEXT.search(stdout)
    if not text:
        raise ToolOutputError("genie-t2t-run", "[BEGIN]: ... [END] text", stderr)
    fields: dict[str, float] = {}
    for m in _KPI.finditer(stdout):
        fields[f"{m['name'].lower()} us"] = float(m["us"])
        if m["rate"]:
            fields[f"{m['name'].lower()} tokens/s"] = float(m["rate"])
    version = _VERSION.search(stdout)
    return ToolReport(tool="genie-t2t-run", fields=fields, texts=[text[1]], version=version[1] if version else None)
