"""How one variant serves a request with the reference engine: the paper's techniques.

- greedy or DS2D decoding, one stream (DS2D keeps its budget controller across requests;
  its drafter is n-gram matching, or that plus the trained forecast tokens);
  each DS2D request is paired with a plain greedy run of the same prompt in the same
  process (order alternating), so `ds2d_speedup` and `matches_greedy` compare like with
  like instead of two processes run minutes apart;
- adapters on one stream: each request is served once per adapter, switching between
  them as a multi-task app would; `runtime` mode switches by a new adapter index into
  the bank passed to the forward, `merged` mode copies prepared merged weights in;
- K streams: one batched forward per step, stream i with adapter i; after it, the same
  prompt runs as K sequential single-stream requests so `multistream_speedup` compares
  like with like (same prompt, same adapters, same machine state).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness.measure.counters import decode_rate
from harness.engine import Engine, ds2d
from harness.engine.generate import Generation
from harness.engine.drafter import NGramDrafter
from harness.engine.forecast import ForecastDrafter, ForecastTokens
from harness.engine.model import AdapterInputs
from harness.engine.lora import AdapterBank, load_peft, load_weights, merged_sets
from harness.engine.multistream import generate_streams, generate_with_adapter

DS2D_EXTRA_SLOTS = 64  # KV slots past the sequence that DS2D's largest verify forward occupies (DECODE_ROWS)


@dataclass
class Output:
    adapter: str | None
    generation: Generation
    seconds: float  # from the start of serving to this output's last token
    stats: dict[str, float | list[float]] = field(default_factory=dict)


class VariantServer:
    def __init__(self, engine: Engine, variant: dict, adapters_dir: Path | None, max_seq_len: int,
                 forecast_file: Path | None = None) -> None:
        self.engine, self.variant = engine, variant
        names = variant["adapters"]
        adapters = {name: load_peft(adapters_dir / name, engine.model.config) for name in names}
        self.bank = AdapterBank.stack(adapters, dtype=engine.dtype)
        self.merged = merged_sets(engine.model, adapters) if variant["lora_mode"] == "merged" else None
        extra = DS2D_EXTRA_SLOTS if variant["decoding"] == "ds2d" else 0
        engine.reserve(max_seq_len + extra, batch=variant["streams"])
        self.forecast = ForecastTokens.load(forecast_file, engine.model.config) if forecast_file else None
        self.controller = ds2d.BudgetController(group=1 + (self.forecast.k if self.forecast else 0))
        self.requests = 0

    @property
    def adapter_bytes(self) -> int:
        """Bytes held for adapters: the bank, plus the merged weight sets in merged mode."""
        merged = sum(t.numel() * t.element_size() for s in (self.merged or {}).values() for t in s.values())
        return self.bank.adapter_bytes + merged

    @contextlib.contextmanager
    def applied(self, adapter: str | None) -> Iterator[AdapterInputs | None]:
        """The model with `adapter` applied as this variant applies it (None: the base model):
        the forward's adapter inputs in runtime mode, the merged weights in merged mode."""
        if adapter is None:
            yield None
        elif self.merged is not None:
            load_weights(self.engine.model, self.merged[adapter])
            try:
                yield None
            finally:
                self.restore_base()
        else:
            yield self.bank.inputs([adapter])

    def restore_base(self) -> None:
        """Put the base weights back (merged mode leaves the last adapter's in)."""
        if self.merged is not None:
            load_weights(self.engine.model, self.merged[None])

    def serve(self, prompt_ids: list[int], max_new_tokens: int) -> list[Output]:
        if self.variant["streams"] > 1:
            return self._streams(prompt_ids, max_new_tokens)
        if self.variant["adapters"]:
            return [self._with_adapter(prompt_ids, max_new_tokens, name) for name in self.variant["adapters"]]
        if self.variant["decoding"] == "ds2d":
            return [self._ds2d_paired(prompt_ids, max_new_tokens)]
        start = time.perf_counter()
        generation = self.engine.generate(prompt_ids, max_new_tokens)
        return [Output(None, generation, time.perf_counter() - start, {})]

    def _ds2d_paired(self, prompt_ids: list[int], max_new_tokens: int) -> Output:
        """DS2D, and plain greedy on the same prompt as its reference; the output is DS2D's."""
        self.requests += 1
        eos = self.engine.tokenizer.eos_id
        runs: dict[str, tuple[Generation, float]] = {}
        for decoding in ("ds2d", "greedy") if self.requests % 2 else ("greedy", "ds2d"):
            start = time.perf_counter()
            if decoding == "ds2d":
                drafter = ForecastDrafter(self.forecast) if self.forecast else NGramDrafter()
                generation = ds2d.generate(self.engine.model, prompt_ids, max_new_tokens, eos, drafter, self.controller)
            else:
                generation = self.engine.generate(prompt_ids, max_new_tokens)
            runs[decoding] = generation, time.perf_counter() - start
        (drafted, seconds), (greedy, _) = runs["ds2d"], runs["greedy"]
        stats = dict(drafted.stats, matches_greedy=float(drafted.token_ids == greedy.token_ids))
        if len(drafted.token_times) >= 2 and len(greedy.token_times) >= 2:
            stats["ds2d_speedup"] = decode_rate(drafted.token_times) / decode_rate(greedy.token_times)
        return Output(None, drafted, seconds, stats)

    def _with_adapter(self, prompt_ids: list[int], max_new_tokens: int, name: str) -> Output:
        start = time.perf_counter()
        if self.merged is not None:
            load_weights(self.engine.model, self.merged[name])  # the merged deployment's switch
            switched = time.perf_counter()
            generation = self.engine.generate(prompt_ids, max_new_tokens)
        else:
            inputs = self.bank.inputs([name])  # the runtime deployment's switch: a new index tensor, nothing else
            switched = time.perf_counter()
            generation = generate_streams(self.engine.model, prompt_ids, max_new_tokens,
                                          self.engine.tokenizer.eos_id, inputs)[0]
        # the generation's clock started after the switch: put its tokens on the request's clock
        offset = switched - start
        generation.token_times = [offset + t for t in generation.token_times]
        stats = {"adapter_switch_ms": offset * 1e3}
        return Output(name, generation, time.perf_counter() - start, stats)

    def _streams(self, prompt_ids: list[int], max_new_tokens: int) -> list[Output]:
        model, eos = self.engine.model, self.engine.tokenizer.eos_id
        adapters = list(self.variant["adapters"]) or [None] * self.variant["streams"]
        start = time.perf_counter()
        generations = generate_streams(model, prompt_ids, max_new_tokens, eos, self.bank.inputs(adapters),
                                       self.variant["prefill"])
        together = time.perf_counter() - start
        outputs = [Output(a, g, together, dict(g.stats)) for a, g in zip(adapters, generations)]
        start = time.perf_counter()
        for adapter in adapters:
            generate_with_adapter(model, prompt_ids, max_new_tokens, eos, self.bank, adapter)
        outputs[0].stats["multistream_speedup"] = (time.perf_counter() - start) / together
        return outputs
