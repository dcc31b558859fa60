"""The shipped default checkpoint loads strictly and answers its example scenes correctly."""

import csv
from pathlib import Path

import pytest

from mmdemo.datasets.sortofclevr import COLORS, RADIUS
from mmdemo.inference.predictor import Predictor

CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "sort-of-clevr"


@pytest.fixture(scope="module")
def predictor():
    return Predictor.from_checkpoint(CHECKPOINT, "cpu")


def test_example_scenes_are_answered_correctly(predictor):
    rows = list(csv.DictReader(open(CHECKPOINT / "examples" / "examples.csv", newline="")))
    assert len(rows) == 6
    for row in rows:
        p = predictor.predict(CHECKPOINT / "examples" / row["image"], row["text"])
        assert p.label == row["label"], (row, p.scores)


def test_heatmap_points_at_the_asked_object(predictor, tmp_path):
    from mmdemo.datasets.sortofclevr import SceneObject, render

    scene = [
        SceneObject(c, "square" if i % 2 else "circle", x, y)
        for i, (c, (x, y)) in enumerate(zip(COLORS, [(12, 12), (60, 14), (35, 40), (15, 62), (58, 58), (40, 10)]))
    ]
    render(scene).save(tmp_path / "scene.png")
    for obj in scene:
        p = predictor.predict(tmp_path / "scene.png", f"What shape is the {obj.color} object?")
        assert p.label == obj.shape
        x, y = p.explanation.peak_xy
        assert abs(x - obj.x) <= 2 * RADIUS and abs(y - obj.y) <= 2 * RADIUS, (obj, p.explanation.peak_xy)
