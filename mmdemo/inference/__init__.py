"""Inference: the Predictor (validate, decode, classify, explain, out-of-scope check), its engines (PyTorch, ONNX Runtime), micro-batching and export."""
