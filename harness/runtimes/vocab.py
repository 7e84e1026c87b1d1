"""A model's tokenizer as llama.cpp itself has it, for the models the reference engine's
tokenizer does not read (Gemma's SentencePiece vocabulary): llama-cpp-python's vocab-only
load of the same GGUF, so token counts and ids are the ones the tools work with."""

from __future__ import annotations

from pathlib import Path


class LlamaCppVocab:
    def __init__(self, path: Path) -> None:
        import llama_cpp

        self._vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        self.eos_id, self.bos_id = self._vocab.token_eos(), self._vocab.token_bos()
        self.adds_bos = self._vocab.metadata.get("tokenizer.ggml.add_bos_token") == "true"

    def encode(self, text: str) -> list[int]:
        return self._vocab.tokenize(text.encode(), add_bos=False, special=False)

    def decode(self, ids: list[int]) -> str:
        return self._vocab.detokenize(ids).decode(errors="replace")

    def token_text(self, token: int) -> str:
        return self._vocab.detokenize([token], special=True).decode(errors="replace")

    def prompt_text(self, prompt: dict) -> str:
        """A base model has no chat template: prompts go to it raw (scenario load checks that)."""
        return prompt["prompt"]
