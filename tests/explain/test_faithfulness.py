"""Faithfulness maths (faithfulness.py) on hand-made images and a model stand-in whose answer
depends on one known cell, so the expected curves are known."""

import numpy as np
import pytest
import torch
from PIL import Image

from mmdemo.explain import faithfulness as F


def test_cells_tile_the_image():
    boxes = F.cell_boxes((3, 4), (75, 50))
    assert len(boxes) == 12 and boxes[0][:2] == (0, 0) and boxes[-1][2:] == (75, 50)
    assert sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes) == 75 * 50


def test_deletion_and_insertion_images():
    a = np.full((40, 40, 3), 255, np.uint8)
    a[:20, :20] = (255, 0, 0)
    image = Image.fromarray(a)
    assert F.blank_colour(image) == (255, 255, 255)
    deleted = F.masked_images(image, (2, 2), [0, 1, 2, 3], steps=4)
    assert len(deleted) == 5 and np.array_equal(np.asarray(deleted[0]), a)
    assert (np.asarray(deleted[1]) == 255).all()  # the red cell went first
    inserted = F.masked_images(image, (2, 2), [0, 1, 2, 3], steps=4, insert=True)
    assert (np.asarray(inserted[0]) == 255).all() and np.array_equal(np.asarray(inserted[-1]), a)


def test_area():
    assert F.area(np.array([0.5, 0.5, 0.5])) == pytest.approx(0.5)
    assert F.area(np.array([1.0, 0.0])) == pytest.approx(0.5)


def _red_cell_model(images, texts):
    """Probability of answer 0 = fraction of red pixels left in the top-left quarter."""
    p = np.array([(np.asarray(im)[:20, :20] == (255, 0, 0)).all(-1).mean() for im in images])
    return np.stack([p, 1 - p], 1)


def test_a_heatmap_on_the_decisive_cell_deletes_faster_than_random():
    a = np.full((40, 40, 3), 255, np.uint8)
    a[:20, :20] = (255, 0, 0)
    faithful = torch.tensor([[1.0, 0.1], [0.1, 0.0]])
    misleading = torch.tensor([[0.0, 0.1], [0.1, 1.0]])
    good = F.curves(_red_cell_model, Image.fromarray(a), "q", faithful, 0, steps=4, random_orders=8)
    bad = F.curves(_red_cell_model, Image.fromarray(a), "q", misleading, 0, steps=4, random_orders=8)
    assert good["deletion"][0] == 1.0 and good["deletion"][1] == 0.0
    assert good["deletion_auc"] < good["random_deletion_auc"] < bad["deletion_auc"]
    assert good["insertion_auc"] > bad["insertion_auc"]


def test_rank_correlation_and_reinitialisation():
    x = torch.arange(16.0).reshape(4, 4)
    assert F.rank_correlation(x, x) == pytest.approx(1.0)
    assert F.rank_correlation(x, -x) == pytest.approx(-1.0)
    layer = torch.nn.Linear(4, 4)
    before = layer.weight.clone()
    F.reinitialise(layer, seed=1)
    assert not torch.equal(before, layer.weight)


def test_reinitialise_changes_every_fusion_parameter(tiny_model):
    with torch.no_grad():  # "trained" weights: every tensor moved away from its initial value
        for p in tiny_model.fusion.parameters():
            p.add_(0.1 * torch.randn_like(p))
    before = {n: p.detach().clone() for n, p in tiny_model.fusion.named_parameters()}
    F.reinitialise(tiny_model.fusion)
    unchanged = [n for n, p in tiny_model.fusion.named_parameters() if torch.equal(before[n], p)]
    assert unchanged == []  # layers and free parameters (learned tokens) alike


def test_sample_indices_spread_over_the_set():
    assert F.sample_indices(100, 5) == [0, 25, 50, 74, 99]
    assert F.sample_indices(3, 8) == [0, 1, 2] and F.sample_indices(10, 0) == []


def test_dataset_faithfulness_of_a_model_against_itself_and_its_randomised_copy(tiny_checkpoint, fixture_path):
    from mmdemo.inference.predictor import Predictor
    from mmdemo.model.checkpoint import load_checkpoint

    predictor = Predictor.from_checkpoint(tiny_checkpoint, "cpu")
    images = [Image.open(fixture_path("chelsea.jpg")).convert("RGB").resize((64, 48))] * 2
    texts = ["where is the cat?", "what is this?"]
    same = F.dataset_faithfulness(predictor, predictor, images, texts, ["raw", "gradient"], steps=4)
    assert same["rows"] == 2 and set(same) >= {"raw", "gradient"}
    for method in ("raw", "gradient"):
        f = same[method]
        assert f["randomisation_rank_correlation"] == pytest.approx(1.0)  # the same model: the same heatmap
        assert all(0 <= f[k] <= 1 for k in ("deletion_auc", "random_deletion_auc", "insertion_auc"))
    model = load_checkpoint(tiny_checkpoint)
    F.reinitialise(model.fusion, seed=3)
    randomised = Predictor(model, "cpu")
    other = F.dataset_faithfulness(predictor, randomised, images, texts, ["raw"], steps=4)
    assert other["raw"]["randomisation_rank_correlation"] < 0.9
    # the curves are the trained model's: the randomised copy only changes the correlation
    assert other["raw"]["deletion_auc"] == same["raw"]["deletion_auc"]
