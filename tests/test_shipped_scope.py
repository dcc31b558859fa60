"""The shipped checkpoint's out-of-scope statistics (real weights): a photo and an unknown colour
are flagged; a fresh scene with the held-out wording, a paraphrase and "grey" are not."""

from pathlib import Path

import numpy as np
import pytest

from mmdemo.service import Predictor
from mmdemo.sortofclevr import HELD_OUT, random_scene, render

CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "sort-of-clevr"


@pytest.fixture(scope="module")
def predictor():
    return Predictor.from_checkpoint(CHECKPOINT, "cpu")


def test_photo_and_unanswerable_questions_are_flagged(predictor, fixture_path):
    cat = predictor.predict(fixture_path("chelsea.jpg"), "What animal is in this picture?")
    assert not cat.in_scope and "image" in cat.scope["reasons"]
    scene = render(random_scene(np.random.default_rng(99)))
    for question in ("What shape is the purple object?", "How many red objects are there?"):
        p = predictor.predict(scene, question)
        assert not p.in_scope and p.scope["reasons"] == ["text"], (question, p.scope)


def test_fresh_scenes_with_new_wordings_are_in_scope(predictor):
    rng = np.random.default_rng(98)
    scenes = [render(random_scene(rng)) for _ in range(6)]
    questions = [
        t.format(c=c)
        for t, c in zip((t[0] for t in HELD_OUT.values()), ("red", "green", "blue", "orange", "gray", "yellow"))
    ]
    questions += ["What is the shape of the grey object?", "Is the blue object on the left or right?"]
    images = [scenes[i % 6] for i in range(len(questions))]
    for q, p in zip(questions, predictor.predict_batch(images, questions)):
        assert p.in_scope, (q, p.scope)
