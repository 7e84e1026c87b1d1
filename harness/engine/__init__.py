"""Reference inference engine: SmolLM2 from its GGUF file, greedy decoding in PyTorch."""
from harness.engine.engine import Engine, load_engine
from harness.engine.generate import Generation
from harness.engine.gguf_file import model_path
from harness.engine.tokenizer import Tokenizer

__all__ = ["Engine", "Generation", "Tokenizer", "load_engine", "model_path"]
