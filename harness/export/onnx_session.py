"""How an exported graph is run on this host: the export check and the emulated AI Hub device."""


def exact_session_options():
    """onnxruntime options that compute the graph as written (here and in the export check).

    By default onnxruntime fuses DequantizeLinear(int4) + MatMul into MatMulNBits with
    int8-quantized activations (accuracy level 4), which moved the int4 logits by up to
    2.2 from the engine's (0.86 without it).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    return options
