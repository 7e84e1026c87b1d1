"""ONNX export of a variant for device runtimes: exporter.py builds, checks and caches the
graphs (graph.py) from the GGUF weights; feeds.py makes their inputs; onnx_session.py says how
this host runs them. Nothing is imported here, so the emulated AI Hub device, which needs only
onnx_session, starts without torch."""
