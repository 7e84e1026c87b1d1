"""Reference inference engine: SmolLM2 from its GGUF file, greedy decoding in PyTorch."""
from harness.engine.engine import GRAPHS, Engine, load_engine
from harness.engine.generate import Generation
from harness.engine.gguf_file import model_path
from harness.engine.precision import PRECISIONS
from harness.engine.tokenizer import Tokenizer

__all__ = ["GRAPHS", "PRECISIONS", "Engine", "Generation", "Tokenizer", "load_engine", "model_path"]
