"""LoRA adapters as forward inputs: PEFT folders, a stacked bank, merged weights, training."""
import json
import pathlib
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from harness.engine.model import AdapterInputs, ModelConfig, Transformer

# PEFT target module -> (parent in the HF model, our Linear inside a block)
MODULES = {
    "q_proj": ("self_attn", "attention.wq"),
    "k_proj": ("self_attn", "attention.wk"),
    "v_proj": ("self_attn", "attention.wv"),
    "o_proj": ("self_attn", "attention.wo"),
    "gate_proj": ("mlp", "feed_forward.w1"),
    "up_proj": ("mlp", "feed_forward.w3"),
    "down_proj": ("mlp", "feed_forward.w2"),
}
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
_KEY = re.compile(r"base_model\.model\.model\.layers\.(\d+)\.(\w+)\.(\w+)\.lora_([AB])\.weight")
_UNSUPPORTED = ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save")  # truthy -> refuse


@dataclass
class LoraAdapter:
    """One LoRA in the engine's layout: Linear path -> (A [d_in, r], B [r, d_out]), unscaled.

    q/k rows of B are in GGUF order (pairs adjacent), like the model's wq/wk. dY = scale * x @ A @ B.
    """

    weights: dict[str, tuple[Tensor, Tensor]]
    r: int
    alpha: float

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    @property
    def target_modules(self) -> list[str]:
        ours = {path.split(".", 2)[2] for path in self.weights}
        return [name for name, (_, inner) in MODULES.items() if inner in ours]

    def delta(self, path: str) -> Tensor:
        a, b = self.weights[path]
        return self.scale * (a @ b).T  # [d_out, d_in]


def linear_shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    # PEFT module -> (d_in, d_out)
    d, f, kv = config.dim, config.intermediate_size, config.n_local_heads * config.head_dim
    return {"q_proj": (d, d), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (d, d),
            "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}


def rope_heads(config: ModelConfig, module: str) -> int | None:
    """Heads whose rows llama.cpp's converter permuted (q: query heads, k: KV heads), else None."""
    return {"q_proj": config.n_head, "k_proj": config.n_local_heads}.get(module)


def hf_to_gguf_rows(w: Tensor, n_head: int) -> Tensor:
    # w: [n_head * D, ...]; per head, rows (j, j + D/2) become the adjacent pair (2j, 2j+1)
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_to_hf_rows(w: Tensor, n_head: int) -> Tensor:
    # inverse of hf_to_gguf_rows
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_peft(folder: str | pathlib.Path, config: ModelConfig) -> LoraAdapter:
    """A PEFT LoRA folder trained on the Hugging Face model, in the engine's layout."""
    folder = pathlib.Path(folder)
    settings = _read_settings(folder)
    tensors = _read_tensors(folder)
    pairs = _layout(folder, {key: tuple(t.shape) for key, t in tensors.items()}, settings, config)
    weights = {}
    for (layer, module), keys in pairs.items():
        lora_a, lora_b = tensors[keys["A"]].float(), tensors[keys["B"]].float()
        heads = rope_heads(config, module)
        lora_b = lora_b if heads is None else hf_to_gguf_rows(lora_b, heads)
        weights[f"layers.{layer}.{MODULES[module][1]}"] = (lora_a.T.contiguous(), lora_b.T.contiguous())
    return LoraAdapter(weights, settings["r"], settings["lora_alpha"])


def check_peft(folder: str | pathlib.Path, config: ModelConfig) -> None:
    """ValueError if `load_peft` would refuse the folder for a model of `config`: its settings,
    and its tensors' names and shapes from the safetensors header alone (no tensor is read)."""
    folder = pathlib.Path(folder)
    _layout(folder, _header_shapes(folder), _read_settings(folder), config)


def save_peft(adapter: LoraAdapter, folder: str | pathlib.Path, config: ModelConfig,
              base_model: str = BASE_MODEL) -> None:
    """Write `adapter` as a genuine PEFT folder for the Hugging Face model (q/k rows back in HF order)."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    inner_to_module = {inner: name for name, (_, inner) in MODULES.items()}
    tensors = {}
    for path, (a, b) in adapter.weights.items():
        _, layer, inner = path.split(".", 2)
        module = inner_to_module[inner]
        heads = rope_heads(config, module)
        lora_b = b.T if heads is None else gguf_to_hf_rows(b.T, heads)  # [d_out, r]
        prefix = f"base_model.model.model.layers.{layer}.{MODULES[module][0]}.{module}"
        tensors[f"{prefix}.lora_A.weight"] = a.T.contiguous()  # [r, d_in]
        tensors[f"{prefix}.lora_B.weight"] = lora_b.contiguous()
    save_file(tensors, folder / WEIGHTS_FILE, metadata={"format": "pt"})
    settings = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": adapter.r, "lora_alpha": adapter.alpha, "lora_dropout": 0.0, "bias": "none",
        "target_modules": adapter.target_modules, "fan_in_fan_out": False, "use_rslora": False,
        "use_dora": False, "inference_mode": True,
    }
    (folder / CONFIG_FILE).write_text(json.dumps(settings, indent=2) + "\n")


def _read_settings(folder: pathlib.Path) -> dict:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"LoRA folder {folder}: missing {CONFIG_FILE}")
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"LoRA folder {folder}: {CONFIG_FILE} is not valid JSON ({err})") from None
    if not isinstance(settings, dict):
        raise ValueError(f"LoRA folder {folder}: {CONFIG_FILE} is not a JSON object")
    missing = [k for k in ("r", "lora_alpha", "target_modules") if k not in settings]
    if missing:
        raise ValueError(f"LoRA folder {folder}: {CONFIG_FILE} lacks {', '.join(missing)}")
    r, alpha = settings["r"], settings["lora_alpha"]
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"LoRA folder {folder}: {CONFIG_FILE} r must be a whole number >= 1, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ValueError(f"LoRA folder {folder}: {CONFIG_FILE} lora_alpha must be a number, got {alpha!r}")
    if settings.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"LoRA folder {folder}: peft_type {settings['peft_type']!r} is not LORA")
    unsupported = [k for k in _UNSUPPORTED if settings.get(k)]
    if unsupported or settings.get("bias", "none") != "none":
        raise ValueError(f"LoRA folder {folder}: unsupported settings {unsupported or ['bias']}")
    targets = settings["target_modules"]
    if not isinstance(targets, list):
        raise ValueError(f"LoRA folder {folder}: target_modules must be a list of names, got {targets!r}")
    unknown = sorted(set(targets) - set(MODULES))
    if unknown:
        raise ValueError(f"LoRA folder {folder}: unknown target modules {unknown}; known: {', '.join(MODULES)}")
    if settings.get("use_rslora"):  # PEFT's rank-stabilised scale alpha / sqrt(r), as alpha' / r
        settings["lora_alpha"] = settings["lora_alpha"] * settings["r"] ** 0.5
    return settings


def _read_tensors(folder: pathlib.Path) -> dict[str, Tensor]:
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise ValueError(f"LoRA folder {folder}: missing {WEIGHTS_FILE}")
    try:
        return load_file(path)
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise ValueError(f"LoRA folder {folder}: cannot read {WEIGHTS_FILE} ({err})") from None


def _header_shapes(folder: pathlib.Path) -> dict[str, tuple[int, ...]]:
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise ValueError(f"LoRA folder {folder}: missing {WEIGHTS_FILE}")
    try:
        with safe_open(path, framework="pt") as file:
            return {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise ValueError(f"LoRA folder {folder}: cannot read {WEIGHTS_FILE} ({err})") from None


def _layout(folder: pathlib.Path, shapes: dict[str, tuple[int, ...]], settings: dict,
            config: ModelConfig) -> dict[tuple[int, str], dict[str, str]]:
    """(layer, PEFT module) -> {"A": key, "B": key}, in order; every key and shape checked against `config`."""
    found: dict[tuple[int, str], dict[str, str]] = {}
    for key in shapes:
        layer, module, side = _parse_key(folder, key, config, settings["target_modules"])
        found.setdefault((layer, module), {})[side] = key
    if not found:
        raise ValueError(f"LoRA folder {folder}: {WEIGHTS_FILE} holds no lora_A/lora_B tensors")
    for (layer, module), keys in sorted(found.items()):
        _check_pair(folder, f"layers.{layer}.{module}", {side: shapes[key] for side, key in keys.items()},
                    settings["r"], *linear_shapes(config)[module])
    return dict(sorted(found.items()))


def _parse_key(folder: pathlib.Path, key: str, config: ModelConfig, targets: list[str]) -> tuple[int, str, str]:
    match = _KEY.fullmatch(key)
    if match is None:
        raise ValueError(f"LoRA folder {folder}: unexpected tensor {key!r}")
    layer, parent, module, side = int(match[1]), match[2], match[3], match[4]
    if module not in MODULES or MODULES[module][0] != parent:
        raise ValueError(f"LoRA folder {folder}: tensor {key!r} targets unknown module {parent}.{module}")
    if module not in targets:
        raise ValueError(f"LoRA folder {folder}: tensor {key!r} is for {module}, not in target_modules {targets}")
    if layer >= config.n_layer:
        raise ValueError(f"LoRA folder {folder}: tensor {key!r} is for layer {layer}; the model has {config.n_layer}")
    return layer, module, side


def _check_pair(folder: pathlib.Path, name: str, shapes: dict[str, tuple[int, ...]], r: int, d_in: int,
                d_out: int) -> None:
    for side in sorted({"A", "B"} - set(shapes)):
        raise ValueError(f"LoRA folder {folder}: {name} has no lora_{side} tensor")
    for side, want in (("A", (r, d_in)), ("B", (d_out, r))):
        if shapes[side] != want:
            raise ValueError(f"LoRA folder {folder}: {name} lora_{side} has shape {shapes[side]}, "
                             f"expected {want} (r={r})")


@dataclass
class AdapterBank:
    """Named adapters stacked for AdapterInputs: slot 0 zeros (base), then one slot per adapter.

    weights: path -> (A [S, d_in, r_max], B [S, r_max, d_out]) with each slot's scale folded into B;
    an adapter without a path, or of a lower rank, is zero-padded there.
    """

    slots: dict[str, int]
    weights: dict[str, tuple[Tensor, Tensor]]

    @classmethod
    def stack(cls, adapters: dict[str, LoraAdapter], dtype: torch.dtype = torch.float32) -> "AdapterBank":
        slots = {name: i + 1 for i, name in enumerate(adapters)}
        r = max((a.r for a in adapters.values()), default=0)
        paths = sorted({p for a in adapters.values() for p in a.weights})
        return cls(slots, {p: _stack_path(p, adapters, r, dtype) for p in paths})

    @property
    def names(self) -> list[str]:
        return list(self.slots)

    @property
    def adapter_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for pair in self.weights.values() for t in pair)

    def inputs(self, names: list[str | None]) -> AdapterInputs:
        """Row b uses adapter names[b] (None = base). Switching adapters is only a new index."""
        unknown = [n for n in names if n is not None and n not in self.slots]
        if unknown:
            raise ValueError(f"unknown adapters {unknown}; the bank holds {self.names}")
        return AdapterInputs(self.weights, torch.tensor([self.slots.get(n, 0) for n in names]))  # index: [B]


def _stack_path(path: str, adapters: dict[str, LoraAdapter], r: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    a0, b0 = next(a.weights[path] for a in adapters.values() if path in a.weights)
    a_all = torch.zeros(len(adapters) + 1, a0.shape[0], r, dtype=dtype)  # [S, d_in, r]
    b_all = torch.zeros(len(adapters) + 1, r, b0.shape[1], dtype=dtype)  # [S, r, d_out]
    for slot, adapter in enumerate(adapters.values(), start=1):
        if path in adapter.weights:
            a, b = adapter.weights[path]
            a_all[slot, :, : adapter.r] = a
            b_all[slot, : adapter.r] = b * adapter.scale
    return a_all, b_all


# Merged mode: one prepared weight set per adapter, copied into the live model to switch.

def merge(model: Transformer, adapter: LoraAdapter, paths: list[str] | None = None) -> dict[str, Tensor]:
    """W + scale * (A @ B).T for `paths` (default: the adapter's) of a model that holds the base weights."""
    paths = sorted(adapter.weights) if paths is None else paths
    return {p: merge_weight(model.get_submodule(p).weight.detach(), adapter, p) for p in paths}


def merged_sets(model: Transformer, adapters: dict[str, LoraAdapter]) -> dict[str | None, dict[str, Tensor]]:
    """name (None = base) -> a full replacement for every Linear any adapter touches."""
    paths = sorted({p for a in adapters.values() for p in a.weights})
    base = {p: model.get_submodule(p).weight.detach().clone() for p in paths}
    return {None: base, **{name: merge(model, adapter, paths) for name, adapter in adapters.items()}}


def merge_weight(weight: Tensor, adapter: LoraAdapter, path: str) -> Tensor:
    # weight: [d_out, d_in], merged in float32, stored in the weight's dtype
    if path not in adapter.weights:
        return weight.clone()
    return (weight.float() + adapter.delta(path)).to(weight.dtype)


@torch.no_grad()
def load_weights(model: Transformer, weights: dict[str, Tensor]) -> None:
    """Merged mode's adapter switch: copy a prepared weight set into the model's parameters."""
    for path, w in weights.items():
        model.get_submodule(path).weight.copy_(w)


# Training: frozen base, autograd through the engine's forward with the adapter as AdapterInputs.

@dataclass
class Example:
    prompt_ids: list[int]
    response_ids: list[int]  # the only tokens the loss sees


@dataclass
class TrainConfig:
    r: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = tuple(MODULES)
    epochs: int = 3
    batch_size: int = 4
    lr: float = 1e-3
    seed: int = 0


def init_adapter(config: ModelConfig, train: TrainConfig) -> LoraAdapter:
    """PEFT's init: A uniform(+-1/sqrt(d_in)) (kaiming, a=sqrt(5)), B zeros, so training starts at the base."""
    shapes, weights = linear_shapes(config), {}
    for layer in range(config.n_layer):
        for module in train.targets:
            d_in, d_out = shapes[module]
            a = (torch.rand(d_in, train.r) * 2 - 1) / d_in**0.5
            weights[f"layers.{layer}.{MODULES[module][1]}"] = (a, torch.zeros(train.r, d_out))
    return LoraAdapter(weights, train.r, train.alpha)


def train_lora(model: Transformer, examples: list[Example], train: TrainConfig) -> tuple[LoraAdapter, list[float]]:
    """A LoRA for the frozen fp32 `model`, and the loss of every step. Leaves the KV cache re-allocated."""
    torch.manual_seed(train.seed)
    adapter = init_adapter(model.config, train)
    params = [t.requires_grad_() for pair in adapter.weights.values() for t in pair]
    optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=0.0)
    losses = []
    for _ in range(train.epochs):
        order = torch.randperm(len(examples)).tolist()
        for i in range(0, len(order), train.batch_size):
            loss = batch_loss(model, adapter, [examples[j] for j in order[i : i + train.batch_size]])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    for t in params:
        t.requires_grad_(False)
    return adapter, losses


def batch_loss(model: Transformer, adapter: LoraAdapter, batch: list[Example]) -> Tensor:
    """Mean next-token cross-entropy over response tokens, right-padded rows (causal: padding is never seen)."""
    seqs = [e.prompt_ids + e.response_ids for e in batch]
    length = max(map(len, seqs))
    tokens = torch.zeros(len(batch), length, dtype=torch.long)  # [B, T]
    targets = torch.full((len(batch), length), -100)  # [B, T], -100 = no loss
    for row, (e, seq) in enumerate(zip(batch, seqs)):
        tokens[row, : len(seq)] = torch.tensor(seq)
        targets[row, len(e.prompt_ids) - 1 : len(seq) - 1] = torch.tensor(e.response_ids)
    # fresh caches: the forward writes K/V with autograd history into them
    model.setup_caches(len(batch), length, torch.float32)
    weights = {p: (a[None], (b * adapter.scale)[None]) for p, (a, b) in adapter.weights.items()}  # one slot
    inputs = AdapterInputs(weights, torch.zeros(len(batch), dtype=torch.long))
    h = model.hidden(tokens, torch.arange(length), adapters=inputs)  # [B, T, dim]
    keep = targets != -100
    return F.cross_entropy(model.head(h[keep]), targets[keep])  # LM head on response rows only
