"""The shipped checkpoint's out-of-scope statistics (real weights): a photo and an unknown colour
are flagged; a fresh scene with the held-out wording, a paraphrase and "grey" are not; fresh
scenes re-encoded as JPEG, resized or blurred stay in scope while photos, their thumbnails and
non-scene images stay out (``python -m mmdemo bench-scope`` measures the same on more scenes)."""

from pathlib import Path

import numpy as np
import pytest

from mmdemo.datasets.sortofclevr import HELD_OUT, random_scene, render
from mmdemo.inference.predictor import Predictor

CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "sort-of-clevr"


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


def test_reencoded_fresh_scenes_stay_in_scope(predictor):
    from mmdemo.benchmarks.scope import reencodings
    from mmdemo.datasets.sortofclevr import PHRASINGS, QUESTION_TYPES

    transforms = reencodings()
    chosen = ("JPEG q60", "JPEG q80", "resized to 150 px, bicubic", "blur radius 0.7")
    rng = np.random.default_rng(97)  # a seed neither the training, the scope fit nor bench-scope uses
    scenes = [render(random_scene(rng)) for _ in range(13)]
    images = [transforms[name](scene) for name in chosen for scene in scenes]
    questions = [PHRASINGS[QUESTION_TYPES[i % 6]][0].format(c="red") for i in range(len(images))]
    flagged = [(q, p.scope) for q, p in zip(questions, predictor.predict_batch(images, questions)) if not p.in_scope]
    assert len(flagged) <= 0.02 * len(images), flagged  # at most 1 of 52


def test_photos_thumbnails_and_non_scene_images_stay_flagged(predictor):
    from PIL import Image

    from mmdemo.benchmarks.scope import _jpeg, non_scene_images

    images = non_scene_images()
    images.update(
        {f"{name} as a 75 px JPEG": _jpeg(im.resize((75, 75), Image.BICUBIC), 60) for name, im in list(images.items())}
    )
    question = "What shape is the red object?"
    results = predictor.predict_batch(list(images.values()), [question] * len(images))
    missed = [name for name, p in zip(images, results) if "image" not in p.scope["reasons"]]
    assert not missed
