"""ONNX export (``python -m mmdemo export``): the whole model (image encoder, text encoder,
fusion, head) as one ONNX graph that ONNX Runtime, or any ONNX server, runs without mmdemo.

Inputs: ``pixels`` float32 (N, 3, S, S), preprocessed as the checkpoint's config says (resize to
S x S, then (x / 255 - pixel_mean) / pixel_std); ``input_ids`` and ``attention_mask`` int64
(N, T) from the text model's WordPiece tokenizer. Outputs: ``logits`` (N, labels) first, then
the cross-attention (N, H, 1 + T, R) and text self-attention (N, H, 1 + T, 1 + T) of each
fusion layer (what the explanations are made from), then, for a model with several tasks,
``logits_<task>`` of each further task (``logits`` is the first task's). N and T are dynamic. Probabilities are
softmax(logits / temperature); the labels, temperature and preprocessing travel in the ONNX
file's metadata (``mmdemo_config``, the checkpoint's model config as JSON).

The legacy TorchScript exporter is used: it traces the eager model in about a second, which
also lets the Predictor export its serving graph at load time (inference/engines.py).
"""

from __future__ import annotations

import copy
import io
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..model.classifier import ModelConfig, MultimodalClassifier
from ..model.encoders import fuse_conv_bn

OPSET = 17


def to_onnx(
    module: nn.Module,
    args: tuple,
    target: str | os.PathLike | io.BytesIO,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict,
) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(
            module.eval(),
            args,
            target if isinstance(target, io.BytesIO) else str(target),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
        )


class ModelGraph(nn.Module):
    """The classifier's forward with flat outputs: logits, then the attention of each layer."""

    def __init__(self, model: MultimodalClassifier):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.model(pixels, input_ids, attention_mask)
        return (out.logits, *out.cross_attention, *out.text_attention, *out.extra_logits)


def output_names(config: ModelConfig) -> list[str]:
    """``logits`` (the first task's), the attention of each layer, then ``logits_<task>`` for
    each further task."""
    layers = config.fusion_layers
    return [
        "logits",
        *[f"cross_attention_{i}" for i in range(layers)],
        *[f"text_attention_{i}" for i in range(layers)],
        *[f"logits_{t['name']}" for t in config.extra_tasks],
    ]


def export_onnx(model: MultimodalClassifier, out: str | os.PathLike) -> dict:
    """Write ``model`` (eval mode, BatchNorm folded) to ``out``; returns what was written."""
    import onnx

    config = model.config
    model = copy.deepcopy(model).eval()  # the caller's model is left as it was
    fuse_conv_bn(model.image_encoder)  # the same arithmetic, fewer nodes
    s = config.image_size
    ids = torch.full((2, 8), 101, dtype=torch.long)  # example shapes for the tracer; values do not matter
    names = output_names(config)
    rows = {0: "batch"}
    buffer = io.BytesIO()
    to_onnx(
        ModelGraph(model),
        (torch.zeros(2, 3, s, s), ids, torch.ones_like(ids)),
        buffer,
        ["pixels", "input_ids", "attention_mask"],
        names,
        {
            "pixels": rows,
            "input_ids": {0: "batch", 1: "tokens"},
            "attention_mask": {0: "batch", 1: "tokens"},
            **{name: rows for name in names},
        },
    )
    graph = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(graph, {"mmdemo_config": json.dumps(config.to_dict())})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(graph, str(out))
    return {
        "out": str(out),
        "bytes": out.stat().st_size,
        "inputs": ["pixels", "input_ids", "attention_mask"],
        "outputs": names,
        "labels": list(config.labels),
        "tasks": {
            name: {"labels": labels, "output": output, "temperature": t}
            for name, labels, output, t in zip(
                config.task_names(),
                config.task_labels(),
                ["logits"] + names[1 + 2 * config.fusion_layers :],
                config.task_temperatures(),
            )
        },
        "image_size": s,
        "pixel_mean": config.pixel_mean,
        "pixel_std": config.pixel_std,
        "temperature": config.temperature,
        "text_model": config.text_model,
        "max_tokens": config.max_tokens,
    }
