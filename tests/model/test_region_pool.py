"""Pooled regions: the encoder's map average-pooled before the fusion (``region_pool``)."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from mmdemo.inference.export import export_onnx
from mmdemo.model.checkpoint import load_checkpoint, save_checkpoint
from mmdemo.model.classifier import ModelConfig, build_model

from ..conftest import tiny_config
from .test_model import _inputs


def test_the_grid_is_the_encoders_grid_pooled():
    assert ModelConfig(labels=["a", "b"], image_size=224, region_pool=2).grid_size == 7
    assert ModelConfig(labels=["a", "b"], image_size=224).grid_size == 14
    assert ModelConfig(labels=["a", "b"], image_size=200, region_pool=2).grid_size == 7  # 13 regions -> 7
    assert tiny_config(region_pool=2).grid_size == 4  # 32 px at stride 4 -> 8 -> 4


@pytest.mark.parametrize("pool", [0, 5, 1.5])
def test_an_impossible_pool_is_refused(pool):
    with pytest.raises(ValueError, match="region_pool"):
        tiny_config(region_pool=pool)


def test_the_fusion_reads_the_pooled_regions_and_patches_of_their_size():
    model = build_model(tiny_config(region_pool=2)).eval()
    pixels, ids, mask = _inputs(model)
    with torch.no_grad():
        out = model(pixels, ids, mask)
        torch.testing.assert_close(model.encode_image(pixels), F.avg_pool2d(model.image_encoder(pixels), 2))
    assert out.grid == (4, 4)
    assert all(c.shape[-1] == 16 for c in out.cross_attention)
    assert model.fusion.pixel_proj.kernel_size == (8, 8)  # each region's own 8x8 pixels


def test_a_pooled_checkpoint_round_trips_and_exports(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_config(region_pool=2)).eval()
    save_checkpoint(model, tmp_path / "m", training={"command": "test"})
    loaded = load_checkpoint(tmp_path / "m").eval()
    assert loaded.config.region_pool == 2
    pixels, ids, mask = _inputs(model)
    with torch.no_grad():
        want = model(pixels, ids, mask).logits
        torch.testing.assert_close(loaded(pixels, ids, mask).logits, want)
    export_onnx(loaded, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"pixels": pixels.numpy(), "input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    assert np.abs(got - want.numpy()).max() <= 1e-4
