"""The fusion's position readout: where each cross-attention head looked, read by the heads."""

from pathlib import Path

import torch
from safetensors.torch import load_file

from mmdemo.model.checkpoint import read_config
from mmdemo.model.classifier import ModelConfig, build_model
from mmdemo.model.fusion import attended_positions, region_coordinates

from ..conftest import tiny_config
from .test_model import _inputs

SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints" / "sort-of-clevr"


def test_region_coordinates_run_left_to_right_then_top_to_bottom():
    coords = region_coordinates(4)  # a 2 x 2 grid, row by row
    torch.testing.assert_close(coords, torch.tensor([[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]]))


def test_one_hot_attention_reads_the_attended_regions_centre():
    # 1 row, 1 head, summary + 2 text tokens over a 3 x 3 grid
    weights = torch.zeros(1, 1, 3, 9)
    weights[0, 0, 0, 3] = 1  # summary -> middle row, left column
    weights[0, 0, 1, 8] = 1  # token 1 -> bottom right
    weights[0, 0, 2, 2] = 1  # token 2 (padding) -> top right: ignored
    mask = torch.tensor([[True, True, False]])
    out = attended_positions([weights, weights], mask)
    assert out.shape == (1, 2 * 1 * 4)
    third = 2 / 3
    torch.testing.assert_close(out[0, :4], torch.tensor([-third, 0.0, third, third]))
    torch.testing.assert_close(out[0, 4:], out[0, :4])


def test_a_new_model_starts_as_one_without_the_readout():
    with_readout = build_model(tiny_config()).eval()
    without = build_model(tiny_config(position_readout=False)).eval()
    assert with_readout.fusion.position_readout is not None and without.fusion.position_readout is None
    state = {k: v for k, v in with_readout.state_dict().items() if "position_readout" not in k}
    without.load_state_dict(state, strict=True)
    pixels, ids, mask = _inputs(with_readout)
    torch.testing.assert_close(with_readout(pixels, ids, mask).logits, without(pixels, ids, mask).logits)


def test_the_readout_learns_and_teaches_the_attention_where_to_look():
    model = build_model(tiny_config()).train()
    pixels, ids, mask = _inputs(model)
    model(pixels, ids, mask).logits.sum().backward()
    assert model.fusion.position_readout.weight.grad.abs().sum() > 0
    # the coordinates are a differentiable function of the queries: position answers move the attention
    model.zero_grad()
    out = model(pixels, ids, mask)
    text_mask = torch.cat([torch.ones(2, 1, dtype=torch.bool), mask.bool()], dim=1)
    attended_positions(out.cross_attention, text_mask)[:, 0].sum().backward()
    assert model.fusion.layers[0].cross.to_q.weight.grad.abs().sum() > 0


def test_a_config_from_before_the_readout_loads_without_it():
    data = tiny_config().to_dict()
    del data["position_readout"]
    config = ModelConfig.from_dict(data)
    assert config.position_readout is False
    assert not any("position_readout" in k for k in build_model(config).state_dict())


def test_the_shipped_checkpoint_has_no_readout_and_loads_strictly():
    config = read_config(SHIPPED)
    assert config.position_readout is False
    stored = load_file(SHIPPED / "model.safetensors")
    assert not any("position_readout" in k for k in stored)
    model = build_model(config, pretrained=False)
    assert set(stored) <= set(model.state_dict())
