"""Relational questions: the referenced object (under the heatmap peak) and the answer object
(closest / furthest from it in the picture), on generated Sort-of-CLEVR scenes with known answers."""

import numpy as np
from PIL import Image

from mmdemo.datasets.sortofclevr import COLORS, answer, random_scene, render
from mmdemo.explain.relations import find_objects, relation_kind, relation_objects


def _centre(box):
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def test_relation_kind_from_the_wording():
    assert relation_kind("What shape is the object closest to the red object?") == "closest"
    assert relation_kind("What shape is the nearest object to the red item?") == "closest"
    assert relation_kind("What is the shape of the object farthest from the red object?") == "furthest"
    assert relation_kind("What shape is the most distant object from the red item?") == "furthest"
    assert relation_kind("What shape is the red object?") is None


def test_the_answer_object_is_found_from_the_referenced_one():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scene = random_scene(rng)
        image = render(scene)
        assert len(find_objects(image)) == len(COLORS)  # touching objects stay apart (one colour at a time)
        for kind in ("closest", "furthest"):
            color = list(COLORS)[int(rng.integers(len(COLORS)))]
            reference = next(o for o in scene if o.color == color)
            _, expected = answer(scene, kind, color)
            relation = relation_objects(
                image, f"What shape is the object {kind} to the {color} object?", (reference.x, reference.y)
            )
            assert relation.kind == kind
            assert _centre(relation.reference) == (reference.x + 0.5, reference.y + 0.5)
            ax, ay = _centre(relation.answer)
            assert abs(ax - expected.x) <= 1 and abs(ay - expected.y) <= 1


def test_no_relation_for_photos_or_other_questions(fixture_path):
    photo = Image.open(fixture_path("chelsea.jpg"))
    assert relation_objects(photo, "What is closest to the cat?", (10, 10)) is None
    scene = render(random_scene(np.random.default_rng(1)))
    assert relation_objects(scene, "What shape is the red object?", (10, 10)) is None
