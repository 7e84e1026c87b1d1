"""LoRA adapters as forward inputs on the real SmolLM2 (fp32): PEFT folders, bank, merged weights, styles."""
import json
import time
import pathlib

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.engine import Engine, load_engine
from harness.engine.lora import (AdapterBank, LoraAdapter, hf_to_gguf_rows, linear_shapes, load_peft, load_weights,
                                 merged_sets, save_peft)
from harness.engine.model import apply_rotary_emb, precompute_freqs_cis
from harness.engine.multistream import generate_streams, generate_with_adapter
from harness.measure.style import load_markers, style_score

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures"
STYLES = ("formal", "polite", "jovial")
PROMPTS = ["Write a short note to a friend about the weekend.", "What is the capital of France?"]


@pytest.fixture(scope="module")
def engine() -> Engine:
    engine = load_engine("smollm2-135m-instruct", "fp32")
    engine.model.setup_caches(len(STYLES) + 1, 256, engine.dtype)  # one row per stream
    return engine


@pytest.fixture(scope="module")
def adapters(engine: Engine) -> dict[str, LoraAdapter]:
    return {s: load_peft(FIXTURES / "adapters" / s, engine.model.config) for s in STYLES}


@pytest.fixture(scope="module")
def bank(adapters: dict[str, LoraAdapter]) -> AdapterBank:
    return AdapterBank.stack(adapters)


def chat_ids(engine: Engine, user: str) -> list[int]:
    return engine.tokenizer.encode(engine.tokenizer.chat_prompt(user))


def hf_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    # our adjacent-pair rows back to HF's half-split order, written independently of lora.py
    heads = w.reshape(n_head, -1, *w.shape[1:])
    return torch.cat([heads[:, 0::2], heads[:, 1::2]], dim=1).reshape(w.shape)


def write_hf_folder(folder: pathlib.Path, adapter: LoraAdapter, n_head: int, n_kv: int, **config) -> None:
    folder.mkdir(parents=True)
    heads = {"wq": n_head, "wk": n_kv}
    parents = {"attention": "self_attn", "feed_forward": "mlp"}
    names = {"wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj", "w1": "gate_proj", "w3": "up_proj",
             "w2": "down_proj"}
    tensors = {}
    for path, (a, b) in adapter.weights.items():
        _, layer, parent, linear = path.split(".")
        prefix = f"base_model.model.model.layers.{layer}.{parents[parent]}.{names[linear]}"
        tensors[f"{prefix}.lora_A.weight"] = a.T.contiguous()
        tensors[f"{prefix}.lora_B.weight"] = (hf_rows(b.T, heads[linear]) if linear in heads else b.T).contiguous()
    save_file(tensors, folder / "adapter_model.safetensors")
    settings = {"r": adapter.r, "lora_alpha": adapter.alpha, "target_modules": adapter.target_modules, **config}
    (folder / "adapter_config.json").write_text(json.dumps(settings))


def test_runtime_inputs_give_the_merged_weights_tokens(engine: Engine, adapters: dict, bank: AdapterBank) -> None:
    model, eos = engine.model, engine.tokenizer.eos_id
    sets = merged_sets(model, adapters)
    try:
        for user in PROMPTS:
            ids = chat_ids(engine, user)
            for name in STYLES:
                runtime = generate_with_adapter(model, ids, 16, eos, bank, name).token_ids
                load_weights(model, sets[name])
                assert engine.generate(ids, 16).token_ids == runtime, (user, name)
                load_weights(model, sets[None])
    finally:
        load_weights(model, sets[None])


def test_peft_round_trip(tmp_path: pathlib.Path, engine: Engine, adapters: dict) -> None:
    config, adapter = engine.model.config, adapters["formal"]
    save_peft(adapter, tmp_path / "formal", config)
    back = load_peft(tmp_path / "formal", config)
    assert (back.r, back.alpha, back.target_modules) == (adapter.r, adapter.alpha, adapter.target_modules)
    assert all(torch.equal(x, y) for p in adapter.weights for x, y in zip(adapter.weights[p], back.weights[p]))
    saved = json.loads((tmp_path / "formal" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    # the file holds HF-order q/k rows, not ours
    raw = load_file(tmp_path / "formal" / "adapter_model.safetensors")
    q_b = raw["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    assert torch.equal(q_b, hf_rows(adapter.weights["layers.0.attention.wq"][1].T, config.n_head))


def test_hf_layout_adapter_equals_ours(tmp_path: pathlib.Path, engine: Engine, adapters: dict) -> None:
    config, ours = engine.model.config, adapters["jovial"]
    write_hf_folder(tmp_path / "hf", ours, config.n_head, config.n_local_heads, peft_type="LORA")
    loaded = load_peft(tmp_path / "hf", config)
    assert all(torch.equal(x, y) for p in ours.weights for x, y in zip(ours.weights[p], loaded.weights[p]))
    # applying HF-order rows without the permutation would change the model's output
    heads = {"wq": config.n_head, "wk": config.n_local_heads}
    raw = {p: (a, hf_rows(b.T, heads[p[-2:]]).T if p[-2:] in heads else b) for p, (a, b) in ours.weights.items()}
    ids = torch.tensor([chat_ids(engine, PROMPTS[0])])
    with torch.inference_mode():
        logits = [engine.model(ids, torch.arange(ids.shape[1]), adapters=AdapterBank.stack({"x": a}).inputs(["x"]))
                  for a in (loaded, LoraAdapter(raw, ours.r, ours.alpha))]
    assert not torch.allclose(logits[0], logits[1], atol=1e-3)


def test_permutation_matches_rope_layouts() -> None:
    # HF rotates dims (j, j + D/2); the model rotates (2j, 2j + 1) on hf_to_gguf_rows-permuted q/k
    n_head, head_dim, seq = 3, 64, 5
    q_hf = torch.randn(1, seq, n_head, head_dim)
    freqs = precompute_freqs_cis(seq, head_dim, 100000.0)  # [T, D/2, 2]
    cos, sin = (freqs[..., i].repeat(1, 2)[None, :, None] for i in (0, 1))  # [1, T, 1, D]
    rotated = torch.cat([-q_hf[..., head_dim // 2 :], q_hf[..., : head_dim // 2]], dim=-1)
    out_hf = q_hf * cos + rotated * sin

    def to_ours(x: torch.Tensor) -> torch.Tensor:  # permute the feature rows of [1, T, H, D]
        rows = x.reshape(seq, n_head * head_dim).T
        return hf_to_gguf_rows(rows, n_head).T.reshape(x.shape)

    torch.testing.assert_close(apply_rotary_emb(to_ours(q_hf), freqs), to_ours(out_hf))


def test_bad_folders_are_rejected(tmp_path: pathlib.Path, engine: Engine, adapters: dict) -> None:
    config, ours = engine.model.config, adapters["polite"]
    with pytest.raises(ValueError, match="nowhere.*adapter_config.json"):
        load_peft(tmp_path / "nowhere", config)
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16, "target_modules": []}')
    with pytest.raises(ValueError, match="no_weights.*missing adapter_model.safetensors"):
        load_peft(tmp_path / "no_weights", config)
    (tmp_path / "no_weights" / "adapter_model.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match="no_weights.*cannot read adapter_model.safetensors"):
        load_peft(tmp_path / "no_weights", config)
    write_hf_folder(tmp_path / "unknown", ours, config.n_head, config.n_local_heads)
    (tmp_path / "unknown" / "adapter_config.json").write_text(
        json.dumps({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "lm_head"]}))
    with pytest.raises(ValueError, match=r"unknown.*unknown target modules \['lm_head'\]"):
        load_peft(tmp_path / "unknown", config)
    small = LoraAdapter({"layers.0.attention.wq": (torch.zeros(config.dim, 8), torch.zeros(8, 64))}, 8, 16.0)
    write_hf_folder(tmp_path / "shape", small, 1, 1)
    with pytest.raises(ValueError, match=r"shape.*layers.0.q_proj lora_B has shape \(64, 8\), expected \(576, 8\)"):
        load_peft(tmp_path / "shape", config)


def test_switching_adapters_changes_output_not_the_model(engine: Engine, bank: AdapterBank) -> None:
    model, ids = engine.model, chat_ids(engine, PROMPTS[0])
    modules = [id(m) for m in model.modules()]
    pointers = [p.data_ptr() for p in model.parameters()] + [t.data_ptr() for w in bank.weights.values() for t in w]
    outputs = {n: generate_with_adapter(model, ids, 12, engine.tokenizer.eos_id, bank, n).token_ids
               for n in (None, *STYLES)}
    assert len({tuple(t) for t in outputs.values()}) == len(outputs)
    assert [id(m) for m in model.modules()] == modules
    assert [p.data_ptr() for p in model.parameters()] + [
        t.data_ptr() for w in bank.weights.values() for t in w] == pointers
    assert bank.inputs(["jovial"]).weights is bank.weights  # a switch is a new index, nothing else


def test_adapter_bytes(engine: Engine, bank: AdapterBank) -> None:
    shapes = linear_shapes(engine.model.config)
    per_slot = engine.model.config.n_layer * sum((d_in + d_out) * 8 for d_in, d_out in shapes.values())
    assert bank.adapter_bytes == (len(STYLES) + 1) * per_slot * 4


def test_each_adapter_raises_its_style(engine: Engine, bank: AdapterBank) -> None:
    lines = (FIXTURES / "styles" / "heldout.jsonl").read_text().splitlines()
    heldout = [json.loads(line)["instruction"] for line in lines[:3]]
    texts: dict[str | None, str] = {n: "" for n in (None, *STYLES)}
    for user in heldout:
        streams = generate_streams(engine.model, chat_ids(engine, user), 40, engine.tokenizer.eos_id,
                                   bank.inputs(list(texts)), "per_stream")
        for name, gen in zip(texts, streams):
            texts[name] += engine.tokenizer.decode(gen.token_ids) + "\n"
    for style in STYLES:
        markers = load_markers(FIXTURES / "adapters" / style)
        base = style_score(texts[None], markers)
        assert style_score(texts[style], markers) > base + 2, (style, texts[style], texts[None])


def test_the_adapter_switch_is_timed_where_it_happens(engine: Engine, monkeypatch) -> None:
    """The runtime switch builds the inputs the request then runs with: once, inside the switch's clock."""
    from harness.run.serving import VariantServer

    variant = {"adapters": list(STYLES), "lora_mode": "runtime", "streams": 1, "decoding": "greedy"}
    server = VariantServer(engine, variant, FIXTURES / "adapters", 256)
    built, switch = [], server.bank.inputs

    def slow_switch(names):
        time.sleep(0.02)  # a switch that costs 20 ms must show as 20 ms
        built.append(switch(names))
        return built[-1]

    monkeypatch.setattr(server.bank, "inputs", slow_switch)
    outputs = server.serve(chat_ids(engine, PROMPTS[1]), 2)
    assert [o.adapter for o in outputs] == list(STYLES) and len(built) == len(STYLES)  # one switch per request
    assert all(o.stats["adapter_switch_ms"] >= 20 for o in outputs)
    assert all(o.generation.token_times[0] >= o.stats["adapter_switch_ms"] / 1e3 for o in outputs)  # TTFT includes it
