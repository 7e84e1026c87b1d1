"""The reference engine: a GGUF model in PyTorch at a chosen precision (dequantized, or int4: int4.py).

Its decode step runs eagerly, op by op, or as one graph compiled by torch.compile (Inductor
generates fused C++ kernels, as gpt-fast does), the closer analogue of a phone runtime's
compiled graph. Compiling happens when the KV cache is reserved, so it counts in load time.
"""
import contextlib

import torch

from harness.engine import int4
from harness.engine.generate import Generation, decode_step, greedy
from harness.engine.gguf_file import model_config, model_path, read_gguf, state_dict
from harness.engine.model import Transformer
from harness.engine.precision import get_precision
from harness.engine.tokenizer import Tokenizer
from harness.spec.variant import GRAPHS




class Engine:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, precision: str, graph: str = "eager"):
        if graph not in GRAPHS:
            raise ValueError(f"unknown graph {graph!r}; known: {', '.join(GRAPHS)}")
        self.model = model
        self.tokenizer = tokenizer
        self.precision = precision
        self.graph = graph
        # dynamic: the attended length is one symbolic size, so one compiled graph serves every step
        self.step = torch.compile(decode_step, dynamic=True) if graph == "compiled" else decode_step
        self.dtype = get_precision(precision).dtype  # of activations and the KV cache
        # parameters and persistent buffers (int4 codes, scales and zeros); not the KV cache or RoPE tables
        self.weights_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())

    def reserve(self, max_seq_len: int, batch: int = 1) -> None:
        """Allocate the KV cache: `batch` rows (streams) of up to `max_seq_len` tokens (prompt + output)."""
        if not 1 <= max_seq_len <= self.model.config.max_context:
            raise ValueError(f"max_seq_len must be in 1..{self.model.config.max_context}, got {max_seq_len}")
        self.model.setup_caches(max_batch_size=batch, max_seq_len=max_seq_len, dtype=self.dtype)
        if self.graph == "compiled":
            self._compile()

    @torch.inference_mode()
    def _compile(self) -> None:
        """Trace and compile the decode step now (new cache buffers invalidate an earlier graph)."""
        for pos in (1, 2):  # sizes 0 and 1 would be specialized: start the symbolic length at 2
            self.step(self.model, torch.zeros(1, 1, dtype=torch.long), torch.tensor([pos]), pos + 1)
        self.model.reset_caches()

    def kv_cache_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for name, b in self.model.named_buffers() if "kv_cache" in name)

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> Generation:
        # A compiled variant runs every request with the graph compiled at load: a recompile
        # would be timed as decoding, so it is an error (torch's fail_on_recompile), not a slow step.
        compiled = self.graph == "compiled"
        with torch.compiler.set_stance("fail_on_recompile") if compiled else contextlib.nullcontext():
            return greedy(self.model, prompt_ids, max_new_tokens, self.tokenizer.eos_id, self.step)

    @torch.inference_mode()
    def logits(self, token_ids: list[int]) -> torch.Tensor:
        # teacher-forced, one prefill forward -> [T, vocab] float32
        if not 1 <= len(token_ids) <= self.model.max_seq_len:
            raise ValueError(f"need 1..{self.model.max_seq_len} tokens, got {len(token_ids)}")
        self.model.reset_caches()
        tokens = torch.tensor([token_ids])  # [1, T]
        return self.model(tokens, torch.arange(len(token_ids)))[0].float()


def load_engine(name: str, precision: str, *, graph: str = "eager", max_seq_len: int | None = None) -> Engine:
    """The model at `precision` with an eager or compiled decode step (GRAPHS); its KV cache is
    allocated by `reserve` (or here, given `max_seq_len`)."""
    spec = get_precision(precision)
    gguf = read_gguf(model_path(name))
    config = model_config(gguf.metadata)
    with torch.device("meta"):
        model = Transformer(config)
        if spec.int4:
            int4.swap_weights(model)
    model.load_state_dict(int4.state_dict(gguf) if spec.int4 else state_dict(gguf, spec.dtype), assign=True)
    model.requires_grad_(False).eval()
    engine = Engine(model, Tokenizer.from_gguf_metadata(gguf.metadata), precision, graph)
    if max_seq_len is not None:
        engine.reserve(max_seq_len)
    return engine
