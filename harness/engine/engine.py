"""The reference engine: a GGUF model in PyTorch at a chosen precision (dequantized, or int4: int4.py)."""
import torch

from harness.engine import int4
from harness.engine.generate import Generation, greedy
from harness.engine.gguf_file import model_config, model_path, read_gguf, state_dict
from harness.engine.model import Transformer
from harness.engine.precision import get_precision
from harness.engine.tokenizer import Tokenizer


class Engine:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, precision: str):
        self.model = model
        self.tokenizer = tokenizer
        self.precision = precision
        self.dtype = get_precision(precision).dtype  # of activations and the KV cache
        # parameters and persistent buffers (int4 codes, scales and zeros); not the KV cache or RoPE tables
        self.weights_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())

    def reserve(self, max_seq_len: int, batch: int = 1) -> None:
        """Allocate the KV cache: `batch` rows (streams) of up to `max_seq_len` tokens (prompt + output)."""
        if not 1 <= max_seq_len <= self.model.config.max_context:
            raise ValueError(f"max_seq_len must be in 1..{self.model.config.max_context}, got {max_seq_len}")
        self.model.setup_caches(max_batch_size=batch, max_seq_len=max_seq_len, dtype=self.dtype)

    def kv_cache_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for name, b in self.model.named_buffers() if "kv_cache" in name)

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> Generation:
        return greedy(self.model, prompt_ids, max_new_tokens, self.tokenizer.eos_id)

    @torch.inference_mode()
    def logits(self, token_ids: list[int]) -> torch.Tensor:
        # teacher-forced, one prefill forward -> [T, vocab] float32
        if not 1 <= len(token_ids) <= self.model.max_seq_len:
            raise ValueError(f"need 1..{self.model.max_seq_len} tokens, got {len(token_ids)}")
        self.model.reset_caches()
        tokens = torch.tensor([token_ids])  # [1, T]
        return self.model(tokens, torch.arange(len(token_ids)))[0].float()


def load_engine(name: str, precision: str, *, max_seq_len: int | None = None) -> Engine:
    """The model at `precision`; its KV cache is allocated by `reserve` (or here, given `max_seq_len`)."""
    spec = get_precision(precision)
    gguf = read_gguf(model_path(name))
    config = model_config(gguf.metadata)
    with torch.device("meta"):
        model = Transformer(config)
        if spec.int4:
            int4.swap_weights(model)
    model.load_state_dict(int4.state_dict(gguf) if spec.int4 else state_dict(gguf, spec.dtype), assign=True)
    model.requires_grad_(False).eval()
    engine = Engine(model, Tokenizer.from_gguf_metadata(gguf.metadata), precision)
    if max_seq_len is not None:
        engine.reserve(max_seq_len)
    return engine
