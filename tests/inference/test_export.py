"""``python -m mmdemo export``: the whole model in ONNX, run by ONNX Runtime, agrees with eager
and with ``predict``."""

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from mmdemo.inference.predictor import Predictor
from mmdemo.model.checkpoint import load_checkpoint
from mmdemo.model.classifier import ModelConfig
from mmdemo.model.encoders import load_tokenizer
from mmdemo.model.preprocess import image_to_tensor, tokenize


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "mmdemo", "export", "--checkpoint", str(tiny_checkpoint), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["out"] == str(out) and out.stat().st_size == summary["bytes"]
    return out


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _inputs(config: ModelConfig, texts: list[str], seed: int = 0):
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)) for _ in texts]
    pixels = torch.stack([image_to_tensor(im, config) for im in images])
    batch = tokenize(load_tokenizer(config.text_model), texts, config.max_tokens)
    return images, pixels, batch


def test_inputs_outputs_and_metadata(exported, tiny_checkpoint):
    session = _session(exported)
    config = load_checkpoint(tiny_checkpoint).config
    inputs = {i.name: i for i in session.get_inputs()}
    assert list(inputs) == ["pixels", "input_ids", "attention_mask"]
    assert inputs["pixels"].type == "tensor(float)" and inputs["input_ids"].type == "tensor(int64)"
    assert inputs["pixels"].shape[1:] == [3, config.image_size, config.image_size]
    assert isinstance(inputs["input_ids"].shape[0], str) and isinstance(inputs["input_ids"].shape[1], str)
    names = [o.name for o in session.get_outputs()]
    assert names[0] == "logits" and len(names) == 1 + 2 * config.fusion_layers
    meta = json.loads(session.get_modelmeta().custom_metadata_map["mmdemo_config"])
    assert ModelConfig.from_dict(meta) == config


@pytest.mark.parametrize("texts", [["a cat on the left"], ["where", "is the dog in this picture today", "bird?"]])
def test_onnxruntime_matches_eager_logits(exported, tiny_checkpoint, texts):
    """Batch size and length differ from the traced ones: N and T are dynamic."""
    model = load_checkpoint(tiny_checkpoint).eval()
    _, pixels, batch = _inputs(model.config, texts)
    feed = {
        "pixels": pixels.numpy(),
        "input_ids": batch.input_ids.numpy(),
        "attention_mask": batch.attention_mask.numpy(),
    }
    outputs = _session(exported).run(None, feed)
    with torch.no_grad():
        expected = model(pixels, batch.input_ids, batch.attention_mask)
    assert outputs[0].shape == (len(texts), 3)
    assert np.abs(outputs[0] - expected.logits.numpy()).max() <= 1e-4
    for got, want in zip(outputs[1:], expected.cross_attention + expected.text_attention):
        assert np.abs(got - want.numpy()).max() <= 1e-4


def test_onnxruntime_agrees_with_predict(exported, tiny_checkpoint):
    """What a user serving the file computes (README recipe) equals ``predict``'s scores."""
    predictor = Predictor.from_checkpoint(tiny_checkpoint, "cpu", backend="torch")
    session = _session(exported)
    config = ModelConfig.from_dict(json.loads(session.get_modelmeta().custom_metadata_map["mmdemo_config"]))
    texts = ["is it a cat", "which animal is this"]
    images, pixels, batch = _inputs(config, texts, seed=3)
    logits = session.run(
        ["logits"],
        {
            "pixels": pixels.numpy(),
            "input_ids": batch.input_ids.numpy(),
            "attention_mask": batch.attention_mask.numpy(),
        },
    )[0]
    probs = torch.from_numpy(logits / config.temperature).softmax(-1)
    for image, text, row in zip(images, texts, probs):
        prediction = predictor.predict(image, text)
        assert config.labels[int(row.argmax())] == prediction.label
        assert max(abs(float(p) - prediction.scores[label]) for label, p in zip(config.labels, row)) <= 1e-4
