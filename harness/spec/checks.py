"""What a runner process would refuse, found when the scenario loads instead: one line, exit 2.

- the model's GGUF: present, readable, and what the runner builds from its metadata before
  any weight (the engine's config, tokenizer and tensor names; llama.cpp's vocabulary);
- each PEFT adapter folder against that model (`harness.engine.lora.check_peft`: its settings
  and its safetensors header), and the forecast tokens' shapes (their header);
- every request against the model's context, as the runner sizes its KV cache;
- the native runtimes' files: llama.cpp's device build, Genie's SDK and model folder (its
  dialog config made for each variant), ExecuTorch's llama_main, .pte and tokenizer;
- what reaches a device's command line: adapter names are `SAFE_NAME` (spec/variant.py), so
  are the names of the user's files deployed beside a tool, and a prompt sent to a tool as an
  argument holds no NUL (no argv carries one). The adb target shlex-quotes every value too.

No model weights are read and no runner starts.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from harness.engine import gguf_file
from harness.engine.lora import check_peft
from harness.engine.model import ModelConfig
from harness.engine.precision import DECODE_ROWS
from harness.engine.tokenizer import Tokenizer
from harness.errors import HarnessError
from harness.runtimes import genie, llamacpp
from harness.runtimes.vocab import LlamaCppVocab
from harness.spec.prompts import Prompt
from harness.spec.variant import SAFE_NAME, Variant

PEFT_RUNTIMES = ("reference", "llamacpp")  # the runtimes that read the adapters_dir's PEFT folders
SIZED_RUNTIMES = ("reference", "llamacpp")  # the runtimes whose KV cache is sized from our GGUF's context


@dataclass(frozen=True)
class ModelFile:
    """What a runner reads of the model before its weights."""

    name: str
    path: Path
    context: int  # the GGUF's <architecture>.context_length
    config: ModelConfig | None  # the engine's; None for a family only llama.cpp runs
    tokenizer: Tokenizer | None  # the engine's; None: llama.cpp's vocabulary (`tokens` reads it when needed)

    def prompt_text(self, prompt: Prompt) -> str:
        return self.tokenizer.prompt_text(prompt.model_dump()) if self.tokenizer else prompt.prompt

    def tokens(self, text: str, room: int) -> int:
        """The text's token count, or a bound of it when that is at most `room`: a token is at
        least one byte (+1: a prefix space SentencePiece may add), so llama.cpp's vocabulary,
        slow to read, is read only for a text that might not fit."""
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text))
        if not text:
            return 0
        bound = len(text.encode("utf-8")) + 1
        return bound if bound <= room else len(_llamacpp_vocab(self.path).encode(text))


def read_model(where: Path, name: str) -> ModelFile:
    try:
        path = gguf_file.model_path(name)
    except (OSError, ValueError, RuntimeError) as exc:  # a package that assembles its GGUF from parts
        raise HarnessError(f"{where}: model: {name}: its GGUF file cannot be assembled ({_line(exc)})") from None
    if not path.is_file() or not os.access(path, os.R_OK):
        raise HarnessError(f"{where}: model: {name}: GGUF file missing or unreadable: {path} "
                           f"(reinstall {gguf_file.MODELS[name].distribution})")
    info = path.stat()
    try:
        return _read(name, path, info.st_size, info.st_mtime_ns)
    except ValueError as exc:
        raise HarnessError(f"{where}: model: {name}: {path}: {_line(exc)}") from None


@functools.cache
def _read(name: str, path: Path, size: int, mtime_ns: int) -> ModelFile:
    """(size and mtime key the cache: a changed file is read again)"""
    with path.open("rb") as file:
        if file.read(4) != b"GGUF":
            raise ValueError("not a GGUF file (it does not start with 'GGUF')")
    if gguf_file.MODELS[name].family != "llama":  # llama.cpp runs it: its context, nothing of the engine's
        return ModelFile(name, path, _context_length(path), None, None)
    try:
        gguf = gguf_file.read_gguf(path)
    except Exception as exc:  # gguf's reader raises assorted errors on a damaged file
        raise ValueError(f"not a readable GGUF file ({type(exc).__name__}: {_line(exc)})") from None
    try:
        config = gguf_file.model_config(gguf.metadata)
        tokenizer = Tokenizer.from_gguf_metadata(gguf.metadata)
        for _ in gguf_file.named_tensors(gguf):  # the names the engine maps, not the tensors
            pass
    except KeyError as exc:
        raise ValueError(f"its metadata lacks {exc}") from None
    return ModelFile(name, path, config.max_context, config, tokenizer)


_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}  # GGUF types
_STRING, _ARRAY = 8, 9


def _context_length(path: Path) -> int:
    """`<architecture>.context_length`, reading the GGUF's key-value pairs only up to it: the
    hyperparameters come before the tokenizer's arrays, which gguf's reader parses whole (six
    seconds for Gemma's 262k tokens)."""
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            found: dict[str, object] = {}
            at, (count,) = 24, struct.unpack_from("<Q", data, 16)  # magic, version, tensors, key-value pairs
            for _ in range(count):
                key, at = _string(data, at)
                (kind,), at = struct.unpack_from("<I", data, at), at + 4
                found[key], at = _value(data, at, kind)
                wanted = f"{found.get('general.architecture')}.context_length"
                if isinstance(found.get(wanted), int) and found[wanted] > 0:
                    return found[wanted]
        except (struct.error, UnicodeDecodeError, KeyError) as exc:
            raise ValueError(f"not a readable GGUF file ({type(exc).__name__}: {_line(exc)})") from None
    raise ValueError("its metadata has no context length")


def _string(data: mmap.mmap, at: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", data, at)
    if at + 8 + length > len(data):
        raise struct.error("a string past the end of the file")
    return data[at + 8 : at + 8 + length].decode("utf-8"), at + 8 + length


def _value(data: mmap.mmap, at: int, kind: int) -> tuple[object, int]:
    if kind == _STRING:
        return _string(data, at)
    if kind == _ARRAY:  # skipped: no array is wanted
        (element, count), at = struct.unpack_from("<IQ", data, at), at + 12
        if element in _SCALARS:
            return None, at + count * struct.calcsize(_SCALARS[element])
        for _ in range(count):
            _, at = _value(data, at, element)
        return None, at
    return struct.unpack_from("<" + _SCALARS[kind], data, at)[0], at + struct.calcsize(_SCALARS[kind])


@functools.cache
def _llamacpp_vocab(path: Path) -> LlamaCppVocab:
    try:
        return LlamaCppVocab(path)
    except ImportError:
        raise HarnessError(f"{path}: its tokenizer is llama.cpp's, read by llama-cpp-python, which is not "
                           "installed (pip install 'hil-harness[test]')") from None


def _line(exc: BaseException) -> str:
    """A foreign error's message on one line."""
    return " ".join(str(exc).split())


def check_adapters(where: Path, model: ModelFile, adapters_dir: Path, variants: list[Variant]) -> None:
    """Each adapter a PEFT runtime reads, against the model as the runner would load it."""
    names = sorted({name for v in variants if v.runtime in PEFT_RUNTIMES for name in v.adapters})
    if names and model.config is None:
        raise HarnessError(f"{where}: variants: adapters {', '.join(names)} are LoRA folders for a LLaMA-family "
                           f"model; model {model.name} is not one (llama.cpp's LoRA conversion reads llama)")
    for name in names:
        try:
            check_peft(adapters_dir / name, model.config)
        except ValueError as exc:
            raise HarnessError(f"{where}: variants: adapter {name!r}: {_line(exc)}") from None
    converted = next((v for v in variants if v.runtime == "llamacpp" and v.adapters), None)
    if converted and importlib.util.find_spec("transformers") is None:
        raise HarnessError(f"{where}: variants: variant {converted.key}: llama.cpp's LoRA converter needs "
                           "transformers, which is not installed (pip install 'hil-harness[llamacpp]')")


def check_forecast(where: Path, model: ModelFile, path: Path) -> None:
    """The forecast tokens as harness.engine.forecast.ForecastTokens.load requires them."""
    shapes = _shapes(where, "forecast_dir", path)
    config = model.config
    assert config is not None, "forecast tokens are the reference engine's: a LLaMA-family model"
    k = (shapes.get("embeddings") or (0,))[0]
    for name, shape in (("embeddings", (k, config.dim)), ("layers", (config.n_layer, k, config.dim))):
        if shapes.get(name) != shape:
            raise HarnessError(f"{where}: forecast_dir: {path}: tensor {name!r} has shape {shapes.get(name)}; "
                               f"model {model.name} needs {shape} (k = {k} forecast tokens)")


def check_context(where: Path, model: ModelFile, variants: list[Variant], prompts: list[Prompt],
                  max_new_tokens: int, source: str) -> None:
    """Every request fits the model's context as the runner reserves it: prompt tokens plus
    max_new_tokens (the reference engine: or an accuracy item's reference, teacher-forced after
    it, if longer; and DS2D's verify rows past the sequence). `source`: the workload's field."""
    sized = [v for v in variants if v.runtime in SIZED_RUNTIMES]
    room = model.context - max_new_tokens - DECODE_ROWS  # a text within it fits any variant
    tokens = {p.id: (model.tokens(model.prompt_text(p), room), model.tokens(_reference(p), room))
              for p in prompts} if sized else {}
    for variant in sized:
        extra = DECODE_ROWS if variant.decoding == "ds2d" else 0
        for prompt in prompts:
            n, reference = tokens[prompt.id]
            new = max(max_new_tokens, reference) if variant.runtime == "reference" else max_new_tokens
            if n + new + extra <= model.context:
                continue
            if new > max_new_tokens:
                field, fix = source, f"its reference of {reference} tokens is teacher-forced after it"
            elif n + extra < model.context:
                field, fix = "workload.max_new_tokens", f"allowed with this prompt: at most {model.context - n - extra}"
            else:
                field, fix = source, "the prompt alone fills it"
            slots = f" + {extra} DS2D verify rows" if extra else ""
            raise HarnessError(f"{where}: {field}: prompt {prompt.id!r} is {n} tokens; with {new} more{slots} variant "
                               f"{variant.key} needs {n + new + extra} positions, model {model.name}'s context is "
                               f"{model.context} ({fix})")


def check_native_files(where: Path, variants: list[Variant], settings: dict[str, dict | None],
                       suite: bool) -> None:
    """The files each native variant deploys and runs; `settings`: the scenario's block per
    runtime with absolute paths (Scenario.runtime_settings); `suite`: accuracy items (llama-perplexity)."""
    for variant in variants:
        block = settings.get(variant.runtime) or {}
        if variant.runtime == "llamacpp" and block.get("device_bin"):
            tools = [f"llama-{llamacpp.tool(variant)}"]
            tools += ["llama-perplexity"] if suite and not variant.adapters else []
            for tool in tools:
                _file(where, "llamacpp.device_bin", Path(block["device_bin"]) / tool, variant)
        elif variant.runtime == "genie":
            _genie_files(where, variant, block)
        elif variant.runtime == "executorch":
            model = block["models"][variant.precision]
            _file(where, "executorch.llama_main", Path(block["llama_main"]), variant)
            for key in ("pte", "tokenizer"):
                field = f"executorch.models.{variant.precision}.{key}"
                _safe_path(where, field, Path(Path(model[key]).name))
                _file(where, field, Path(model[key]), variant)


def check_command_values(where: Path, variants: list[Variant], prompts: list[Prompt], source: str) -> None:
    """A native tool gets each prompt as a command-line argument: no NUL can be in one; llama.cpp's
    tools get OMP_NUM_THREADS as their -t (harness/run/native.py), a whole number."""
    threads = os.environ.get("OMP_NUM_THREADS", "")
    llama = next((v for v in variants if v.runtime == "llamacpp"), None)
    if llama and threads and not threads.strip().isdigit():
        raise HarnessError(f"{where}: OMP_NUM_THREADS (environment): {threads!r} is not a whole number; "
                           f"variant {llama.key} gives it to llama.cpp's tools as -t")
    native = next((v for v in variants if v.runtime != "reference"), None)
    for prompt in prompts if native else ():
        if "\0" in prompt.prompt:
            raise HarnessError(f"{where}: {source}: prompt {prompt.id!r} holds a NUL character, which no command "
                               f"line can carry (variant {native.key} passes it to a {native.runtime} tool as an "
                               "argument)")


def _genie_files(where: Path, variant: Variant, block: dict) -> None:
    field = f"genie.models.{variant.precision}"
    _file(where, "genie.sdk", Path(block["sdk"]) / "bin/aarch64-android/genie-t2t-run", variant)
    folder = Path(block["models"][variant.precision])
    config_path = _file(where, field, folder / "genie_config.json", variant)
    try:
        config = genie.dialog_config(json.loads(config_path.read_text(encoding="utf-8")), variant, str(folder))
        dialog = config["dialog"]
        named = [dialog["tokenizer"]["path"], *dialog["engine"]["model"]["binary"]["ctx-bins"]]
        named += [p for a in dialog["engine"]["model"]["binary"].get("lora", {}).get("adapters", [])
                  for p in a["bin-sections"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # ConfigError is a ValueError
        what = f"lacks {exc}" if isinstance(exc, KeyError) else _line(exc)
        raise HarnessError(f"{where}: {field}: {config_path}: {what}") from None
    for path in named:
        _file(where, field, Path(path), variant)
    for file in folder.rglob("*"):
        _safe_path(where, field, file.relative_to(folder))


def _file(where: Path, field: str, path: Path, variant: Variant) -> Path:
    if not path.is_file() or not os.access(path, os.R_OK):
        raise HarnessError(f"{where}: {field}: no readable file {path} (variant {variant.key} needs it)")
    return path


def _safe_path(where: Path, field: str, relative: Path) -> None:
    """A file deployed to a device: its path there is made of SAFE_NAME parts."""
    bad = next((part for part in relative.parts if not re.fullmatch(SAFE_NAME, part)), None)
    if bad is not None:
        raise HarnessError(f"{where}: {field}: file name {bad!r} goes into a device path and command line; "
                           f"allowed: letters, digits, '.', '_', '-', a letter or digit first")


def _shapes(where: Path, field: str, path: Path) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(path, framework="pt") as file:
            return {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise HarnessError(f"{where}: {field}: {path}: not a readable safetensors file ({_line(exc)})") from None


def _reference(prompt: Prompt) -> str:
    """An accuracy item's reference, which the runner teacher-forces after its prompt ('' otherwise)."""
    return prompt.reference if prompt.language and isinstance(prompt.reference, str) else ""


def check_output(path: Path, option: str) -> None:
    """A file `harness run` writes (--db as it starts, --json and --report at its end): one it
    could not write is found now, not after the run."""
    if path.is_dir():
        raise HarnessError(f"{path}: {option}: is a folder; give a file")
    folder = next(p for p in path.absolute().parents if p.exists())
    if not folder.is_dir():
        raise HarnessError(f"{path}: {option}: {folder} is a file, not a folder")
    if not os.access(path if path.exists() else folder, os.W_OK):
        raise HarnessError(f"{path}: {option}: not writable")


def check_store(path: Path) -> None:
    """--db: a results store (SQLite), or a file that does not exist yet."""
    check_output(path, "--db")
    if path.is_file() and path.stat().st_size:
        with path.open("rb") as file:
            if file.read(16) != b"SQLite format 3\0":
                raise HarnessError(f"{path}: --db: not a results store (an SQLite file)")
