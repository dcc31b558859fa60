"""The image–text contrastive loss: symmetric, lower for matched pairs than shuffled ones, rows
of one image are not negatives of each other, its temperature learns, and a run that uses it
saves a checkpoint with the same keys as a run without it."""

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from mmdemo.datasets.csv_table import read_csv
from mmdemo.model.classifier import build_model
from mmdemo.training.contrastive import ContrastiveLoss, info_nce, pooled
from mmdemo.training.finetune import FinetuneRequest, finetune, resume
from mmdemo.training.loop import train
from mmdemo.training.settings import TrainSettings

from ..conftest import tiny_config
from .test_train import sixteen_rows  # noqa: F401  (fixture)

SCALE = torch.tensor(math.log(10.0))  # 1 / temperature = 10


def test_loss_is_symmetric_in_image_and_text():
    torch.manual_seed(0)
    image, text = torch.randn(5, 8), torch.randn(5, 8)
    one_each = torch.arange(5)
    assert torch.allclose(info_nce(image, text, one_each, SCALE), info_nce(text, image, one_each, SCALE))


def test_with_one_row_per_image_it_is_clips_loss():
    torch.manual_seed(0)
    image, text = torch.randn(4, 8), torch.randn(4, 8)
    logits = 10 * F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T
    clip = (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.T, torch.arange(4))) / 2
    assert torch.allclose(info_nce(image, text, torch.arange(4), SCALE).mean(), clip)


def test_matched_pairs_score_lower_than_shuffled_ones():
    torch.manual_seed(0)
    image = torch.randn(8, 16)
    text = image + 0.3 * torch.randn(8, 16)  # each text close to its own image
    matched = info_nce(image, text, torch.arange(8), SCALE).mean()
    shuffled = info_nce(image, text[torch.randperm(8)], torch.arange(8), SCALE).mean()
    assert matched < shuffled - 1.0


def test_rows_sharing_an_image_are_not_negatives_of_each_other():
    """Rows 0 and 1 ask about image A, row 2 about image B: each row of A gets the loss it
    would get as A's only row (the other question about A is no negative), while B's row counts
    both texts of A as negatives."""
    torch.manual_seed(0)
    a, b = torch.randn(2, 8)
    t0, t1, u = torch.randn(3, 8)
    shared = info_nce(torch.stack([a, b]), torch.stack([t0, t1, u]), torch.tensor([0, 0, 1]), SCALE)
    alone0 = info_nce(torch.stack([a, b]), torch.stack([t0, u]), torch.tensor([0, 1]), SCALE)
    alone1 = info_nce(torch.stack([a, b]), torch.stack([t1, u]), torch.tensor([0, 1]), SCALE)
    assert torch.allclose(shared[0], alone0[0]) and torch.allclose(shared[1], alone1[0])
    # by hand for B's row: its text picks B among {A, B}; B picks u among {t0, t1, u}
    cos = lambda x, y: 10 * F.cosine_similarity(x, y, dim=0)  # noqa: E731
    to_image = -torch.log_softmax(torch.stack([cos(u, a), cos(u, b)]), 0)[1]
    to_text = -torch.log_softmax(torch.stack([cos(b, t0), cos(b, t1), cos(b, u)]), 0)[2]
    assert torch.allclose(shared[2], (to_image + to_text) / 2)
    # one image asked twice is one positive pair: nothing to tell apart, no loss; counted as two
    # images (the same picture as its own negative) it would be at least log 2
    one_image = info_nce(a[None], torch.stack([t0, t1]), torch.tensor([0, 0]), SCALE)
    assert torch.equal(one_image, torch.zeros(2))
    as_two_images = info_nce(torch.stack([a, a]), torch.stack([t0, t1]), torch.tensor([0, 1]), SCALE)
    assert (as_two_images > math.log(2) / 2).all()


def _tiny_batch(model, images=3, rows=6, tokens=5):
    torch.manual_seed(1)
    size = model.config.image_size
    pixels = torch.randn(images, 3, size, size)
    feature_map = model.encode_image(pixels)  # (U, C, h, w)
    text_states = model.encode_text(torch.randint(5, 100, (rows, tokens)), torch.ones(rows, tokens, dtype=torch.long))
    mask = torch.ones(rows, tokens, dtype=torch.long)
    return feature_map, pixels, text_states, mask, torch.arange(rows) % images


def test_pooled_text_is_read_before_it_sees_the_image(tiny_model):
    feature_map, pixels, text_states, mask, _ = _tiny_batch(tiny_model)
    first = pooled(tiny_model.fusion, feature_map, pixels, text_states, mask)
    other = pooled(tiny_model.fusion, feature_map.flip(0), pixels.flip(0), text_states, mask)
    assert first.image.shape == (3, tiny_model.fusion.dim) and first.text.shape == (6, tiny_model.fusion.dim)
    assert torch.allclose(first.image.flip(0), other.image, atol=1e-5) and torch.equal(first.text, other.text)


def test_temperature_and_every_projection_receive_a_gradient(tiny_model):
    loss_module = ContrastiveLoss(tiny_model.fusion.dim)
    feature_map, pixels, text_states, mask, index = _tiny_batch(tiny_model)
    loss_module(tiny_model.fusion, feature_map.detach(), pixels, text_states.detach(), mask, index).mean().backward()
    for name, p in loss_module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    fusion = dict(tiny_model.fusion.named_parameters())
    for name in ("image_proj.0.weight", "pixel_proj.weight", "text_proj.0.weight", "region_layers.0.ff.4.weight"):
        assert fusion[name].grad is not None and fusion[name].grad.abs().sum() > 0, name
    # what the classifier reads after the regions and the text projection is not on this path
    assert fusion["layers.0.cross.to_q.weight"].grad is None and fusion["question_proj.weight"].grad is None
    assert abs(loss_module.temperature - 0.07) < 1e-6


@pytest.fixture
def captioned_rows(tmp_path):
    """12 images, one caption each naming its colour and where its square is."""
    import csv

    import numpy as np
    from PIL import Image

    (tmp_path / "img").mkdir()
    colours = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 200, 0)}
    rows = []
    for i in range(12):
        name, colour = list(colours.items())[i % 3]
        a = np.full((32, 32, 3), 255, np.uint8)
        top = (i // 3) % 2 == 0
        a[(2 if top else 20) : (10 if top else 28), 4 + 2 * (i // 6) : 12 + 2 * (i // 6)] = colour
        Image.fromarray(a).save(tmp_path / "img" / f"{i}.png")
        rows.append([f"img/{i}.png", f"a {name} square at the {'top' if top else 'bottom'}", name])
    with open(tmp_path / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "text", "label"])
        writer.writerows(rows)
    return tmp_path / "train.csv"


def _settings(**kw):
    values = dict(epochs=20, batch_size=12, lr=3e-3, encoder_lr=3e-3, freeze=[], modality_dropout=0.0, warmup=0.1)
    return TrainSettings(**(values | kw))


def test_training_lowers_the_contrastive_loss_and_records_it(captioned_rows):
    ds = read_csv(captioned_rows)
    # 40 steps: with the fusion's position readout the loss reaches its floor later (20 steps:
    # 2.5 -> 1.7, 40 steps: 2.5 -> 0.7; without the readout 0.8 and 0.7)
    result = train(ds, ds, _settings(contrastive=0.5, epochs=40), config=tiny_config())
    losses = [h["train_contrastive_loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]


def test_a_negative_weight_is_refused(captioned_rows):
    ds = read_csv(captioned_rows)
    with pytest.raises(ValueError, match="contrastive loss's weight"):
        train(ds, ds, _settings(epochs=1, contrastive=-0.1), config=tiny_config())


@pytest.mark.slow
def test_a_resumed_run_with_the_loss_matches_an_uninterrupted_one(sixteen_rows, tmp_path):  # noqa: F811
    def request(out):
        settings = _settings(epochs=4, batch_size=4, modality_dropout=0.2, contrastive=0.5)
        ds = read_csv(sixteen_rows)
        return FinetuneRequest(ds, out, settings, val_dataset=ds, config=tiny_config(dropout=0.1))

    full = finetune(request(tmp_path / "full"))
    epochs = []
    finetune(
        request(tmp_path / "cut"),
        progress=lambda e: epochs.append(e) if e["stage"] == "epoch" else None,
        should_stop=lambda: len(epochs) >= 2,
    )
    resumed = resume(tmp_path / "cut")
    history = lambda r, key: [h[key] for h in r.record["history"]]  # noqa: E731
    assert history(resumed, "train_contrastive_loss") == history(full, "train_contrastive_loss")
    assert history(resumed, "train_loss") == history(full, "train_loss")
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_with_the_loss_saves_the_same_checkpoint_keys_as_one_without(captioned_rows, tmp_path):
    ds = read_csv(captioned_rows)
    keys, history = {}, {}
    for weight in (0.0, 0.5):
        out = tmp_path / f"w{weight}"
        settings = _settings(epochs=2, contrastive=weight)
        result = finetune(FinetuneRequest(ds, out, settings, val_dataset=ds, config=tiny_config()))
        history[weight] = result.record["history"]
        keys[weight] = set(load_file(out / "model.safetensors"))
    assert keys[0.0] == keys[0.5] and not any("contrastive" in k or "logit_scale" in k for k in keys[0.5])
    assert "train_contrastive_loss" in history[0.5][0] and "train_contrastive_loss" not in history[0.0][0]


@pytest.mark.slow
def test_train_command_takes_the_weight_and_records_it(captioned_rows, tmp_path):
    checkpoints = {}
    for weight in ("0", "0.5"):
        out = tmp_path / f"w{weight}"
        command = [sys.executable, "-m", "mmdemo", "train", "--csv", str(captioned_rows), "--out", str(out)]
        command += ["--init", str(_tiny_checkpoint(tmp_path)), "--epochs", "2", "--contrastive", weight]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        checkpoints[weight] = out
    keys = {w: set(load_file(out / "model.safetensors")) for w, out in checkpoints.items()}
    assert keys["0"] == keys["0.5"] and not any("contrastive" in k or "logit_scale" in k for k in keys["0.5"])
    record = json.loads((checkpoints["0.5"] / "config.json").read_text())["training"]
    assert record["settings"]["contrastive"] == 0.5
    assert "train_contrastive_loss" in record["history"][0]


def _tiny_checkpoint(tmp_path):
    from mmdemo.model.checkpoint import save_checkpoint

    path = tmp_path / "tiny"
    if not path.exists():
        torch.manual_seed(0)
        save_checkpoint(build_model(tiny_config()), path, training={"command": "tests"})
    return path
