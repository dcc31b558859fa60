"""Fitting the out-of-scope statistics (training/scope_fit.py): slots found from the training
texts, the shrunk Gaussian, re-encoded copies of every image, statistics saved beside the
weights and read back, and a fine-tune that stores them."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmdemo.datasets.csv_table import read_csv
from mmdemo.inference import scope
from mmdemo.inference.predictor import Predictor
from mmdemo.model.checkpoint import save_checkpoint
from mmdemo.model.classifier import build_model
from mmdemo.training import scope_fit

from ..conftest import tiny_config, write_colour_scenes

TEXTS = [f"what shape is the {c} object" for c in ("red", "green", "blue", "gray")] + [
    f"is the {c} thing on the left" for c in ("red", "green", "blue", "gray")
]


def test_slots_are_the_words_that_replace_each_other():
    slots = scope_fit.find_slots([scope.words(t) for t in TEXTS])
    assert len(slots) == 1
    assert slots[0]["words"] == ["blue", "gray", "green", "red"]
    assert slots[0]["counts"] == [1]  # every training text names exactly one colour
    assert slots[0]["left"] == ["the"] and slots[0]["right"] == ["object", "thing"]


def test_the_gaussian_is_the_sample_one_shrunk_towards_its_mean_eigenvalue():
    x = torch.randn(200, 4, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 2.0, 0.5, 3.0])
    cov = np.cov(x.numpy(), rowvar=False)
    mean, precision = scope_fit.fit_gaussian(x, shrink=0.0)
    assert np.allclose(mean.numpy(), x.numpy().mean(0), atol=1e-5)
    assert np.allclose(precision.numpy(), np.linalg.inv(cov), rtol=1e-3, atol=1e-5)
    _, shrunk = scope_fit.fit_gaussian(x, shrink=0.5)
    target = 0.5 * cov + 0.5 * np.trace(cov) / 4 * np.eye(4)
    assert np.allclose(shrunk.numpy(), np.linalg.inv(target), rtol=1e-3, atol=1e-5)


def test_reencode_changes_an_image_the_same_way_for_a_seed(fixture_path):
    from PIL import Image

    image = Image.open(fixture_path("chelsea.jpg")).convert("RGB").resize((75, 75))
    first = [scope_fit.reencode(image, np.random.default_rng(3)) for _ in range(2)]
    assert np.array_equal(np.asarray(first[0]), np.asarray(first[1]))
    rng = np.random.default_rng(4)
    for copy in (scope_fit.reencode(image, rng) for _ in range(20)):
        assert copy.mode == "RGB" and 40 <= copy.width <= 310
        assert copy.size != image.size or not np.array_equal(np.asarray(copy), np.asarray(image))


@pytest.fixture
def scenes_csv(tmp_path):
    return Path(write_colour_scenes(tmp_path))


def test_fitted_statistics_cover_reencoded_copies_and_read_back(scenes_csv, tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_config())
    path = save_checkpoint(model, tmp_path / "ckpt")
    examples = read_csv(scenes_csv).examples
    stats, val = scope_fit.fit_scope(model, examples[:64], examples[64:])
    assert stats.slots[0]["words"] == ["blue", "gray", "green", "red"]
    assert stats.image_threshold > 0 and len(val.logits) == len(examples) - 64
    fitted = stats.fitted_on
    assert fitted["reencoded_images"] == scope_fit.REENCODINGS_PER_IMAGE * fitted["images"]
    assert fitted["val_reencoded_images"] == scope_fit.REENCODINGS_PER_IMAGE * fitted["val_images"]
    assert stats.image_mean.shape == (2 * model.image_encoder.out_channels,)
    scope_fit.save_scope(path, stats)
    block = json.loads((path / "config.json").read_text())["scope"]
    assert block["version"] == scope.SCOPE_VERSION == 2 and (path / scope.SCOPE_FILE).is_file()
    loaded = scope.load_scope(path)
    assert torch.allclose(loaded.image_precision, stats.image_precision)
    assert loaded.slots == stats.slots and loaded.fitted_on == stats.fitted_on


def test_finetune_stores_scope_statistics(scenes_csv, tmp_path):
    from mmdemo.training.finetune import FinetuneRequest, finetune
    from mmdemo.training.settings import TrainSettings

    settings = TrainSettings(epochs=1, batch_size=16, freeze=[], modality_dropout=0.0, seed=0)
    request = FinetuneRequest(
        dataset=read_csv(scenes_csv), out=tmp_path / "tuned", settings=settings, config=tiny_config(), val_fraction=0.25
    )
    result = finetune(request)
    stats = scope.load_scope(result.checkpoint)
    assert stats is not None and stats.slots[0]["words"] == ["blue", "gray", "green", "red"]
    p = Predictor.from_checkpoint(result.checkpoint, "cpu").predict(
        scenes_csv.parent / "img" / "0.png", "is the pink square on the left?"
    )
    assert p.scope["fitted"] and "text" in p.scope["reasons"]
