"""Native runtimes (llama.cpp's tools, Qualcomm Genie, ExecuTorch's llama_main): how their output reads as counters."""
