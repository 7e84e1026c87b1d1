"""hil-harness: hardware-in-the-loop benchmarking of on-device LLM variants."""

__version__ = "0.1.0"
