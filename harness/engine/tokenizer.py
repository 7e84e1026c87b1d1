"""Byte-level BPE tokenizer and chat template built from GGUF metadata (no hub access)."""
from typing import Any

import jinja2.sandbox
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

CONTROL = 3  # GGUF token_type of special/control tokens


class Tokenizer:
    def __init__(self, backend: HFTokenizer, bos_id: int, eos_id: int, chat_template: str, adds_bos: bool = False):
        self.backend = backend
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.adds_bos = adds_bos  # llama.cpp puts BOS before a prompt (GGUF tokenizer.ggml.add_bos_token)
        self.template = jinja2.sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True
        ).from_string(chat_template)

    @classmethod
    def from_gguf_metadata(cls, metadata: dict[str, Any]) -> "Tokenizer":
        kind = (metadata["tokenizer.ggml.model"], metadata.get("tokenizer.ggml.pre"))
        if kind != ("gpt2", "smollm"):
            raise ValueError(f"unsupported tokenizer (model, pre-tokenizer) {kind}; only ('gpt2', 'smollm')")
        tokens = metadata["tokenizer.ggml.tokens"]
        merges = [tuple(m.split(" ", 1)) for m in metadata["tokenizer.ggml.merges"]]
        backend = HFTokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
        # llama.cpp's "smollm" pre-tokenizer: single digits, then the GPT-2 regex
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
        backend.decoder = decoders.ByteLevel()
        types = metadata["tokenizer.ggml.token_type"]
        backend.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t, kind in zip(tokens, types) if kind == CONTROL]
        )
        return cls(
            backend,
            bos_id=metadata["tokenizer.ggml.bos_token_id"],
            eos_id=metadata["tokenizer.ggml.eos_token_id"],
            chat_template=metadata["tokenizer.chat_template"],
            adds_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
        )

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=True)

    def token_text(self, token: int) -> str:
        """A token as the vocabulary spells it (special tokens too)."""
        return self.backend.id_to_token(token)

    def chat_prompt(self, user: str) -> str:
        messages = [{"role": "user", "content": user}]
        return self.template.render(messages=messages, add_generation_prompt=True)

    def prompt_text(self, prompt: dict) -> str:
        """A prompt file entry as the model sees it: in the chat template unless its template is raw."""
        if prompt.get("template", "chat") == "chat":
            return self.chat_prompt(prompt["prompt"])
        return prompt["prompt"]
