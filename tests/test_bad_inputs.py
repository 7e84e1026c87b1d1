"""The bad-input campaign (issue 17): every bad input stops `harness run` at load with one line
naming the file and the field, exit 2, no traceback; no model is loaded and no runner starts.

`CASES` is the table: each row says what is wrong (its id), which kind of input it is, and
builds the files in a fresh folder. `test_campaign_figure_is_the_readmes` counts them and
checks the README says so.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from conftest import REPO, write_scenario

FORMAL = REPO / "fixtures" / "adapters" / "formal"
WEIGHTS = "adapter_model.safetensors"
CONTEXT = 8192  # SmolLM2-135M's llama.context_length
MINIMUM = 30  # bad inputs the campaign must try (issue 17)


@dataclass(frozen=True)
class Setup:
    args: list[str]  # after `harness`
    file: Path | str  # what the error line must name
    field: str  # ... and where in it
    gguf: Path | None = None  # the model's GGUF replaced by this file
    env: dict[str, str] | None = None  # environment variables set for the run


@dataclass(frozen=True)
class Case:
    id: str  # what is wrong
    kind: str  # scenario, prompts, adapter, model, cli
    make: Callable[[Path], Setup]


# -- builders --------------------------------------------------------------------------------

def run_args(tmp: Path, path: Path, *more: str) -> list[str]:
    return ["run", str(path), "--db", str(tmp / "db.sqlite"), *more]


def scenario(field: str, prompts: list[dict] | None = None, **fields) -> Callable[[Path], Setup]:
    """A scenario with `fields`; the error names it and `field`."""
    def make(tmp: Path) -> Setup:
        path = write_scenario(tmp, prompts, **fields)
        return Setup(run_args(tmp, path), path, field)
    return make


def scenario_text(data: bytes, field: str) -> Callable[[Path], Setup]:
    def make(tmp: Path) -> Setup:
        path = tmp / "scenario.yaml"
        path.write_bytes(data)
        return Setup(run_args(tmp, path), path, field)
    return make


def prompts_text(data: bytes, field: str) -> Callable[[Path], Setup]:
    """A prompts file of these bytes; the error names the prompts file."""
    def make(tmp: Path) -> Setup:
        path = write_scenario(tmp)
        (tmp / "prompts.jsonl").write_bytes(data)
        return Setup(run_args(tmp, path), tmp / "prompts.jsonl", field)
    return make


def adapter(change: Callable[[Path], None], named: str = "adapters/formal") -> Callable[[Path], Setup]:
    """The `formal` style adapter copied and then damaged by `change`; one variant serves it.
    The error names the scenario's `variants` and `named` (in the folder)."""
    def make(tmp: Path) -> Setup:
        folder = tmp / "adapters" / "formal"
        shutil.copytree(FORMAL, folder)
        change(folder)
        path = write_scenario(tmp, variants={"precision": ["fp32"], "include": [{"adapters": ["formal"]}]},
                              baseline={"precision": "fp32", "adapters": []}, adapters_dir="adapters")
        return Setup(run_args(tmp, path), tmp / named, "variants")
    return make


def config_edit(**changes) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        config = json.loads((folder / "adapter_config.json").read_text())
        config.update(changes)
        (folder / "adapter_config.json").write_text(json.dumps(config))
    return change


def tensors_edit(edit: Callable[[dict], dict]) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        save_file(edit(load_file(folder / WEIGHTS)), folder / WEIGHTS)
    return change


def cut(at: Callable[[bytes], int]) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        data = (folder / WEIGHTS).read_bytes()
        (folder / WEIGHTS).write_bytes(data[:at(data)])
    return change


def header_length(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


def renamed(old: str, new: str) -> Callable[[dict], dict]:
    return lambda tensors: {key.replace(old, new): t for key, t in tensors.items()}


def without(name: str) -> Callable[[dict], dict]:
    return lambda tensors: {key: t for key, t in tensors.items() if name not in key}


def other_model(tensors: dict) -> dict:
    """The same keys, shaped for a model of width 64: what an adapter of another model holds."""
    return {key: t[:, :64].contiguous() if "lora_A" in key else t[:64].contiguous() for key, t in tensors.items()}


def gguf(data: Callable[[], bytes] | None) -> Callable[[Path], Setup]:
    """The model's GGUF replaced by these bytes (None: missing)."""
    def make(tmp: Path) -> Setup:
        path = write_scenario(tmp)
        model = tmp / "model.gguf"
        if data is not None:
            model.write_bytes(data())
        return Setup(run_args(tmp, path), model, "model", gguf=model)
    return make


def real_gguf_head(size: int) -> bytes:
    from harness.engine.gguf_file import model_path

    with model_path("smollm2-135m-instruct").open("rb") as file:
        return file.read(size)


def suite(change: Callable[[Path], None], field: str, named: str = "scenario.yaml") -> Callable[[Path], Setup]:
    """A one-item accuracy suite (English, qa), changed by `change`; the error names `named` in tmp."""
    def make(tmp: Path) -> Setup:
        folder = tmp / "suite"
        (folder / "tasks").mkdir(parents=True)
        (folder / "items").mkdir()
        (folder / "suite.yaml").write_text("languages: {en: English}\ntasks: [qa]\n")
        shutil.copy(REPO / "fixtures/accuracy/tasks/qa.yaml", folder / "tasks")
        item = {"id": "en-qa-1", "language": "en", "task": "qa", "input": "The market has 42 vendors.",
                "question": "How many vendors?", "reference": "42 vendors"}
        (folder / "items" / "en.jsonl").write_text(json.dumps(item) + "\n")
        change(folder)
        path = write_scenario(tmp, workload={"suite": "suite", "max_new_tokens": 4, "repetitions": 1, "warmup": 0})
        return Setup(run_args(tmp, path), tmp / named, field)
    return make


def unknown_template_field(folder: Path) -> None:
    task = folder / "tasks" / "qa.yaml"
    task.write_text(task.read_text().replace("{{ input }}", "{{ text }}"))


def long_reference(folder: Path) -> None:
    item = json.loads((folder / "items" / "en.jsonl").read_text())
    (folder / "items" / "en.jsonl").write_text(json.dumps({**item, "reference": "vendors " * CONTEXT}) + "\n")


def native(runtime: str, field: str, files: Callable[[Path], dict], **fields) -> Callable[[Path], Setup]:
    """A variant of a native runtime on an adb phone, with its settings block from `files(tmp)`."""
    def make(tmp: Path) -> Setup:
        variant = {"runtime": runtime, "precision": "int4"}
        path = write_scenario(tmp, variants={"precision": ["fp32"], "include": [{**variant, **fields}]},
                              baseline={"runtime": "reference"}, targets=["adb"], **files(tmp))
        return Setup(run_args(tmp, path), path, field)
    return make


def genie_bundle(tmp: Path, config: dict | str | None = None, extra: tuple[str, ...] = ()) -> dict:
    """A QAIRT SDK folder and a Genie model folder for int4; `config` replaces its genie_config.json."""
    sdk, bundle = tmp / "qairt", tmp / "bundle"
    (sdk / "bin/aarch64-android").mkdir(parents=True)
    (sdk / "bin/aarch64-android/genie-t2t-run").write_bytes(b"\x7fELF")
    bundle.mkdir()
    for name in ("tokenizer.json", "model.bin", *extra):
        (bundle / name).write_bytes(b"{}")
    dialog = {"sampler": {}, "tokenizer": {"path": "tokenizer.json"},
              "engine": {"backend": {}, "model": {"binary": {"ctx-bins": ["model.bin"]}}}}
    text = config if isinstance(config, str) else json.dumps(config or {"dialog": dialog})
    (bundle / "genie_config.json").write_text(text)
    return {"genie": {"sdk": "qairt", "models": {"int4": "bundle"}}}


def empty_device_bin(tmp: Path) -> dict:
    (tmp / "arm64-bin").mkdir()
    return {"llamacpp": {"device_bin": "arm64-bin"}}


def genie_sdk_elsewhere(tmp: Path) -> dict:
    genie_bundle(tmp)
    return {"genie": {"sdk": "nowhere", "models": {"int4": "bundle"}}}


def executorch_files(tmp: Path, missing: str = "", tokenizer: str = "tokenizer.model") -> dict:
    for name in ("llama_main", "model.pte", tokenizer):
        if name != missing:
            (tmp / name).write_bytes(b"x")
    model = {"pte": "model.pte", "tokenizer": tokenizer}
    return {"executorch": {"llama_main": "llama_main", "models": {"int4": model}}}


def cli(args: Callable[[Path], list[str]], file: Callable[[Path], Path | str], field: str) -> Callable[[Path], Setup]:
    def make(tmp: Path) -> Setup:
        return Setup(args(tmp), file(tmp), field)
    return make


def threads_env(value: str) -> Callable[[Path], Setup]:
    """OMP_NUM_THREADS, which llama.cpp's tools get as -t, set to `value` for a llama.cpp variant."""
    def make(tmp: Path) -> Setup:
        path = write_scenario(tmp, variants={"runtime": ["reference", "llamacpp"], "precision": ["int4"]},
                              baseline={"runtime": "reference"})
        return Setup(run_args(tmp, path), path, "OMP_NUM_THREADS", env={"OMP_NUM_THREADS": value})
    return make


def empty_store(tmp: Path) -> Path:
    from harness.store import Store

    Store(tmp / "db.sqlite").close()
    return tmp / "db.sqlite"


def a_file(tmp: Path, name: str, data: bytes = b"x") -> Path:
    (tmp / name).write_bytes(data)
    return tmp / name


LONG = [{"id": "long", "prompt": "word " * CONTEXT}]
NUL = [{"id": "nul", "prompt": "say \0 hi", "template": "raw"}]
FORECAST = {"variants": {"include": [{"decoding": "ds2d", "drafter": "forecast"}]}, "baseline": {"decoding": "greedy"},
            "forecast_dir": "forecast"}


def forecast(data: Callable[[], bytes]) -> Callable[[Path], Setup]:
    def make(tmp: Path) -> Setup:
        (tmp / "forecast").mkdir()
        (tmp / "forecast" / "smollm2-135m-instruct.safetensors").write_bytes(data())
        path = write_scenario(tmp, **FORECAST)
        return Setup(run_args(tmp, path), tmp / "forecast" / "smollm2-135m-instruct.safetensors", "forecast_dir")
    return make


def forecast_tensors(**shapes: tuple[int, ...]) -> Callable[[], bytes]:
    def data() -> bytes:
        import torch
        from safetensors.torch import save

        return save({name: torch.zeros(shape) for name, shape in shapes.items()})
    return data


CASES = [
    # scenario files
    Case("scenario-not-utf8", "scenario", scenario_text(b"name: caf\xe9\n", "not UTF-8 text")),
    Case("scenario-yaml-syntax", "scenario", scenario_text(b"name: [tiny\n", "not valid YAML")),
    Case("scenario-a-list", "scenario", scenario_text(b"- tiny\n", "(top level)")),
    Case("scenario-a-folder", "scenario", cli(lambda t: ["run", str(t)], lambda t: t, "scenario file not found")),
    Case("adapter-name-with-shell-characters", "scenario",
         scenario("variants.adapters.0.0", variants={"adapters": [["formal; id"]]})),
    Case("aihub-target-with-a-ds2d-variant", "scenario",
         scenario("targets", variants={"decoding": ["greedy", "ds2d"]}, targets=["aihub:Samsung Galaxy S24"])),
    Case("adapter-name-leaving-the-folder", "scenario",
         scenario("variants.adapters.0.0", variants={"adapters": [["../formal"]]})),
    Case("max-new-tokens-beyond-context", "scenario", scenario(
        "workload.max_new_tokens", workload={"prompts": "prompts.jsonl", "max_new_tokens": CONTEXT})),
    Case("ds2d-verify-rows-beyond-context", "scenario", scenario(
        "DS2D verify rows", variants={"include": [{"decoding": "ds2d"}]}, baseline={"decoding": "greedy"},
        workload={"prompts": "prompts.jsonl", "max_new_tokens": CONTEXT - 100})),
    Case("forecast-tokens-not-safetensors", "scenario", forecast(lambda: b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")),
    Case("forecast-tokens-of-another-model", "scenario",
         forecast(forecast_tensors(embeddings=(3, 64), layers=(30, 3, 64)))),
    Case("llamacpp-device-build-without-its-tool", "scenario",
         native("llamacpp", "llamacpp.device_bin", empty_device_bin)),
    Case("genie-sdk-without-genie-t2t-run", "scenario", native("genie", "genie.sdk", genie_sdk_elsewhere)),
    Case("genie-config-not-json", "scenario", native("genie", "genie.models.int4", lambda t: genie_bundle(t, "{"))),
    Case("genie-config-without-ssd-section", "scenario",
         native("genie", "genie.models.int4", lambda t: genie_bundle(t), decoding="ssd")),
    Case("genie-context-binary-missing", "scenario", native(
        "genie", "genie.models.int4", lambda t: genie_bundle(t, {"dialog": {
            "sampler": {}, "tokenizer": {"path": "tokenizer.json"},
            "engine": {"backend": {}, "model": {"binary": {"ctx-bins": ["model.bin", "part2.bin"]}}}}}))),
    Case("genie-bundle-file-name-with-a-space", "scenario",
         native("genie", "genie.models.int4", lambda t: genie_bundle(t, extra=("weights 2.bin",)))),
    Case("executorch-pte-missing", "scenario",
         native("executorch", "executorch.models.int4.pte", lambda t: executorch_files(t, missing="model.pte"))),
    Case("executorch-llama-main-missing", "scenario",
         native("executorch", "executorch.llama_main", lambda t: executorch_files(t, missing="llama_main"))),
    Case("executorch-tokenizer-name-with-shell-characters", "scenario", native(
        "executorch", "executorch.models.int4.tokenizer", lambda t: executorch_files(t, tokenizer="tok$(id).model"))),
    Case("suite-reference-beyond-context", "scenario", suite(long_reference, "workload.suite")),
    Case("suite-template-names-a-missing-field", "scenario", suite(unknown_template_field, "doc_to_text",
                                                                   "suite/tasks/qa.yaml")),
    # prompts files
    Case("prompts-not-utf8", "prompts", prompts_text(b'{"id": "a", "prompt": "caf\xe9"}\n', "not UTF-8 text")),
    Case("prompts-line-not-json", "prompts",
         prompts_text(b'{"id": "a", "prompt": "hi"}\n{"id": "b",\n', ":2: not valid JSON")),
    Case("prompts-line-not-an-object", "prompts", prompts_text(b'["a", "hi"]\n', ":1: (top level)")),
    Case("prompts-duplicate-ids", "prompts",
         prompts_text(b'{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', "id")),
    Case("prompts-file-empty", "prompts", prompts_text(b"\n\n", "no prompts in file")),
    Case("prompts-unknown-template", "prompts",
         prompts_text(b'{"id": "a", "prompt": "x", "template": "jinja"}\n', ":1: template")),
    Case("prompts-empty-prompt", "prompts", prompts_text(b'{"id": "a", "prompt": ""}\n', ":1: prompt")),
    Case("prompt-longer-than-context", "prompts", scenario("workload.prompts", prompts=LONG)),
    Case("prompt-with-nul-to-a-native-tool", "prompts", scenario(
        "workload.prompts", prompts=NUL, variants={"runtime": ["reference", "llamacpp"], "precision": ["int4"]},
        baseline={"runtime": "reference"})),
    # adapters
    Case("adapter-missing", "adapter", adapter(shutil.rmtree, named="adapters")),
    Case("adapter-weights-missing", "adapter", adapter(lambda f: (f / WEIGHTS).unlink())),
    Case("adapter-weights-corrupt", "adapter", adapter(lambda f: (f / WEIGHTS).write_bytes(b"not a tensor file"))),
    Case("adapter-header-truncated", "adapter", adapter(cut(lambda data: header_length(data) // 2))),
    Case("adapter-data-truncated", "adapter", adapter(cut(lambda data: len(data) - 1000))),
    Case("adapter-of-another-model-shapes", "adapter", adapter(tensors_edit(other_model))),
    Case("adapter-rank-differs-from-its-tensors", "adapter", adapter(config_edit(r=4))),
    Case("adapter-tensor-outside-target-modules", "adapter",
         adapter(config_edit(target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"]))),
    Case("adapter-unknown-target-module", "adapter", adapter(config_edit(target_modules=["q_proj", "lm_head"]))),
    Case("adapter-tensor-for-an-unknown-module", "adapter",
         adapter(tensors_edit(renamed("mlp.up_proj", "mlp.in_proj")))),
    Case("adapter-layer-beyond-the-model", "adapter", adapter(tensors_edit(renamed("layers.29.", "layers.99.")))),
    Case("adapter-lora-b-missing", "adapter",
         adapter(tensors_edit(without("layers.0.self_attn.q_proj.lora_B")))),
    Case("adapter-config-not-json", "adapter", adapter(lambda f: (f / "adapter_config.json").write_text("{r: 8"))),
    Case("adapter-config-without-rank", "adapter",
         adapter(lambda f: (f / "adapter_config.json").write_text('{"lora_alpha": 16, "target_modules": ["q_proj"]}'))),
    Case("adapter-rank-zero", "adapter", adapter(config_edit(r=0))),
    Case("adapter-dora", "adapter", adapter(config_edit(use_dora=True))),
    Case("adapter-not-lora", "adapter", adapter(config_edit(peft_type="IA3"))),
    # model files
    Case("model-gguf-missing", "model", gguf(None)),
    Case("model-gguf-empty", "model", gguf(lambda: b"")),
    Case("model-gguf-not-gguf", "model", gguf(lambda: b"PK\x03\x04 a zip file")),
    Case("model-gguf-truncated", "model", gguf(lambda: real_gguf_head(1 << 20))),
    # CLI arguments
    Case("cli-db-a-folder", "cli",
         cli(lambda t: run_args(t, write_scenario(t))[:2] + ["--db", str(t)], lambda t: t, "--db")),
    Case("cli-db-not-a-store", "cli", cli(
        lambda t: run_args(t, write_scenario(t))[:2] + ["--db", str(a_file(t, "notes.txt", b"my notes"))],
        lambda t: t / "notes.txt", "--db")),
    Case("cli-json-under-a-file", "cli", cli(
        lambda t: run_args(t, write_scenario(t), "--json", str(a_file(t, "out") / "results.json")),
        lambda t: t / "out", "--json")),
    Case("cli-report-a-folder", "cli", cli(
        lambda t: run_args(t, write_scenario(t), "--report", str(t)), lambda t: t, "--report")),
    Case("cli-unknown-target", "cli", cli(
        lambda t: run_args(t, write_scenario(t), "--target", "toaster"), lambda t: t / "scenario.yaml", "--target")),
    Case("cli-resume-unknown-run", "cli", cli(
        lambda t: ["run", "--resume", "20990101-000000-000000", "--db", str(empty_store(t))],
        lambda t: t / "db.sqlite", "--resume")),
    Case("cli-scenario-and-resume", "cli", cli(
        lambda t: run_args(t, write_scenario(t), "--resume", "x"), lambda t: "harness run", "--resume")),
    Case("cli-unknown-option", "cli", cli(
        lambda t: run_args(t, write_scenario(t), "--colour", "blue"), lambda t: "harness", "--colour")),
    Case("cli-calibrate-one-run", "cli", cli(
        lambda t: ["calibrate", str(write_scenario(t)), "--runs", "1"], lambda t: "harness calibrate", "--runs")),
    Case("cli-env-threads-a-list", "cli", threads_env("2,1")),
    Case("cli-unknown-export-format", "cli", cli(
        lambda t: ["export", "--format", "xlsx"], lambda t: "harness export", "--format")),
]

PATCHED_MODEL = ("import pathlib, sys; from harness.engine import gguf_file; model = pathlib.Path(sys.argv.pop(1)); "
                 "gguf_file.model_path = lambda name='': model; "
                 "from harness.cli import main; sys.exit(main(sys.argv[1:]))")


def cli_run(setup: Setup) -> subprocess.CompletedProcess:
    env = {**os.environ, **(setup.env or {})}
    if setup.gguf is None:
        return subprocess.run([sys.executable, "-m", "harness.cli", *setup.args], cwd=REPO, capture_output=True,
                              text=True, env=env)
    # the real CLI, its model's GGUF replaced (the package's file stays as it is)
    return subprocess.run([sys.executable, "-c", PATCHED_MODEL, str(setup.gguf), *setup.args], cwd=REPO,
                          capture_output=True, text=True, env=env)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_stops_at_load_with_one_line(tmp_path: Path, case: Case) -> None:
    setup = case.make(tmp_path)
    result = cli_run(setup)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("harness: error: ")
    assert str(setup.file) in lines[0] and setup.field in lines[0], lines[0]
    assert not (tmp_path / "db.sqlite").exists() or case.id == "cli-resume-unknown-run", "nothing ran"


def test_campaign_figure_is_the_readmes() -> None:
    """Bad inputs tried: the table's distinct cases, as the README states them."""
    ids = [c.id for c in CASES]
    assert len(set(ids)) == len(ids), "case ids are distinct"
    kinds = Counter(c.kind for c in CASES)
    assert len(ids) >= MINIMUM and set(kinds) == {"scenario", "prompts", "adapter", "model", "cli"}
    line = f"bad inputs tried: {len(ids)} (" + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())) + ")"
    assert line in " ".join((REPO / "README.md").read_text().split()), f"the README should say: {line}"


def test_values_that_reach_a_device_shell_are_quoted() -> None:
    """The adb target's tool command keeps hostile argv and env values whole: a real sh, given
    the command it builds, passes back exactly the values it was given."""
    from harness.targets.adb.target import FOLDER, AdbTarget

    class Stream:
        exit_code, stderr = 0, b""

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def lines(self, deadline):
            yield "4242\n"

    class Phone:
        def __init__(self) -> None:
            self.commands: list[str] = []

        def stream(self, command: str, timeout):
            self.commands.append(command)
            return Stream()

    target = AdbTarget.__new__(AdbTarget)
    target.phone = Phone()
    argv = ["llamacpp/bin/llama-completion", "-p", "'; touch /tmp/x; echo '", "$(id)", "`id`", "a\nb && id", "\\"]
    env = {"LD_LIBRARY_PATH": "lib dir;$(id)"}
    target._execute(argv, env, 5.0)
    command = target.phone.commands[0]
    prefix = f"cd {shlex.quote(FOLDER)} && echo $$ && exec time -v env "
    assert command.startswith(prefix)
    shown = subprocess.run(["sh", "-c", "printf '%s\\0' " + command.removeprefix(prefix)], capture_output=True,
                           check=True).stdout.decode()
    assert shown.split("\0")[:-1] == [f"{k}={v}" for k, v in env.items()] + argv
