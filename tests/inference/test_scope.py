"""Out-of-scope assessment (inference/scope.py): the maths on hand-made inputs, statistics read
from a checkpoint (and every damaged file named), and predictions carrying the result. Fitting
the statistics is tested in tests/training/test_scope_fit.py."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mmdemo.datasets.csv_table import read_csv
from mmdemo.inference import scope
from mmdemo.inference.predictor import Predictor
from mmdemo.model.checkpoint import save_checkpoint
from mmdemo.model.classifier import build_model
from mmdemo.training.scope_fit import fit_scope, save_scope

from ..conftest import tiny_config, write_colour_scenes

TEXTS = [f"what shape is the {c} object" for c in ("red", "green", "blue", "gray")] + [
    f"is the {c} thing on the left" for c in ("red", "green", "blue", "gray")
]
# the slot fitting finds in TEXTS: one colour word per text, between "the" and "object" / "thing"
COLOUR_SLOT = {"words": ["blue", "gray", "green", "red"], "counts": [1], "left": ["the"], "right": ["object", "thing"]}


def _stats(**overrides) -> scope.ScopeStats:
    ws = [scope.words(t) for t in TEXTS]
    values = dict(
        image_mean=torch.zeros(3),
        image_precision=torch.eye(3),
        text_bank=torch.nn.functional.normalize(torch.eye(4), dim=-1),
        vocab_vectors=torch.zeros(0, 1),
        vocabulary=sorted({w for t in ws for w in t}),
        label_words=["circle", "square", "left", "right"],
        slots=[COLOUR_SLOT],
        image_threshold=2.0,
        text_similarity_floor=0.5,
        unseen_fraction_limit=0.4,
        reliance_floor=0.02,
    )
    values.update(overrides)
    return scope.ScopeStats(**values)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("what shape is the red object", False),
        ("What shape is the RED item?", False),  # case, punctuation, an unseen harmless word
        ("what shape is the purple object", True),  # unknown colour: no slot word
        ("is the red object left of the blue object", True),  # two slot words
        ("is the red shape on the left", True),  # a known word next to a slot word, never seen there
        ("is the red square on the left", False),  # an unseen neighbour gets the benefit of the doubt
    ],
)
def test_text_problems(text, problem):
    stats = _stats()
    _, problems, _ = scope.text_problems(scope.words(text), stats, {})
    assert bool(problems) == problem, problems


def test_a_synonym_counts_as_the_known_word():
    stats = _stats()
    ws = scope.words("what shape is the grey object")
    assert scope.text_problems(ws, stats, {})[1]
    assert not scope.text_problems(ws, stats, {"grey": "gray"})[1]


def test_mahalanobis_matches_the_definition():
    x = torch.randn(200, 4, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 2.0, 0.5, 3.0])
    mean = x.mean(0)
    cov = np.cov(x.numpy(), rowvar=False)
    precision = torch.from_numpy(np.linalg.inv(cov)).float()
    q = torch.tensor([[1.0, -2.0, 0.5, 4.0]])
    d = q.numpy()[0] - x.numpy().mean(0)
    expected = math.sqrt(d @ np.linalg.inv(cov) @ d)
    assert scope.mahalanobis(q, mean, precision).item() == pytest.approx(expected, rel=1e-4)


def test_assess_names_each_reason():
    stats = _stats()
    text_vec = torch.tensor([1.0, 0, 0, 0])
    ws = scope.words("what shape is the red object")
    ok = scope.assess(stats, torch.zeros(3), text_vec, ws, {}, 0.5)
    assert ok["in_scope"] and ok["reasons"] == []
    far = scope.assess(stats, torch.tensor([5.0, 0, 0]), text_vec, ws, {}, 0.5)
    assert far["reasons"] == ["image"] and far["messages"] == ["this image is unlike the training images"]
    ignored = scope.assess(stats, torch.zeros(3), text_vec, ws, {}, 0.001)
    assert ignored["reasons"] == ["ignores_image"] and not ignored["in_scope"]
    odd = scope.assess(stats, torch.zeros(3), text_vec, scope.words("tell me a joke"), {}, 0.5)
    assert odd["reasons"] == ["text"] and odd["unseen_words"] == ["tell", "me", "a", "joke"]
    assert scope.assess(None, None, None, [], {}, 0.0) == {
        "in_scope": True,
        "fitted": False,
        "reasons": [],
        "note": "this checkpoint has no scope statistics",
    }


def test_an_unknown_word_is_named_and_an_unknown_colour_lists_the_known_ones():
    stats = _stats()
    text_vec = torch.tensor([1.0, 0, 0, 0])
    purple = scope.assess(stats, torch.zeros(3), text_vec, scope.words("What shape is the purple object?"), {}, 0.5)
    assert purple["messages"] == ["purple is not a colour this model knows (it knows blue, gray, green, red)"]
    joke = scope.assess(stats, torch.zeros(3), text_vec, scope.words("tell me a joke"), {}, 0.5)
    assert joke["messages"] == [
        "'tell' is not a word this model was trained on; 'me' is not a word this model was trained on;"
        " 'a' is not a word this model was trained on"
    ]
    # no unknown word: the generic reason
    two = scope.assess(stats, torch.zeros(3), text_vec, scope.words("what shape is the red blue object"), {}, 0.5)
    assert two["messages"] == ["this question is unlike the training questions"]


def test_a_scope_block_without_its_file_is_an_error(tiny_checkpoint, tmp_path):
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint, path)
    assert scope.load_scope(path) is None  # no statistics: predictions say so and count as in scope
    data = json.loads((path / "config.json").read_text())
    data["scope"] = {"version": scope.SCOPE_VERSION, "file": scope.SCOPE_FILE}
    (path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="scope.safetensors is missing"):
        scope.load_scope(path)


def test_pooled_image_is_the_mean_then_the_spread_over_regions():
    fm = torch.tensor([[[[0.0, 2.0], [4.0, 6.0]], [[1.0, 1.0], [1.0, 1.0]]]])  # (1, 2, 2, 2)
    pooled = scope.pooled_image(fm)
    assert pooled.shape == (1, 4)
    assert pooled[0].tolist() == pytest.approx([3.0, 1.0, math.sqrt(5.0), 0.0])
    # version 1 statistics were fitted on the mean alone: they read the first half
    assert scope.image_statistic(_stats(version=1), pooled)[0].tolist() == pytest.approx([3.0, 1.0])
    assert scope.image_statistic(_stats(), pooled) is pooled


@pytest.fixture(scope="module")
def scoped_checkpoint(tmp_path_factory):
    """A tiny checkpoint with fitted statistics, and one of its scene images."""
    root = tmp_path_factory.mktemp("scoped")
    torch.manual_seed(0)
    model = build_model(tiny_config())
    path = save_checkpoint(model, root / "tiny-scoped")
    examples = read_csv(write_colour_scenes(root / "data")).examples
    save_scope(path, fit_scope(model, examples[:64], examples[64:])[0])
    return path, root / "data" / "img" / "3.png"


def test_every_prediction_carries_its_scope(scoped_checkpoint, fixture_path):
    path, scene = scoped_checkpoint
    predictor = Predictor.from_checkpoint(path, "cpu")
    inside = predictor.predict(scene, "is the gray square on the left?")
    assert inside.in_scope, inside.scope
    outside = predictor.predict(scene, "is the purple square on the left?")
    assert not outside.in_scope and "text" in outside.scope["reasons"]
    photo = predictor.predict(fixture_path("chelsea.jpg"), "is the red square on the left?")
    assert "image" in photo.scope["reasons"], photo.scope
    out = outside.to_json()
    assert out["in_scope"] is False and out["confidence"] == pytest.approx(max(out["scores"].values()))
    json.dumps(out)  # plain JSON types


def _broken_copy(scoped_checkpoint, tmp_path, name="visitor-model"):
    import shutil

    path = tmp_path / "shipped" / name
    shutil.copytree(scoped_checkpoint[0], path)
    return path


def _cli_error(capsys, path: Path, image: Path) -> tuple[int, str]:
    from mmdemo.cli import main

    capsys.readouterr()
    code = main(
        ["predict", "--checkpoint", str(path), "--image", str(image), "--text", "is the red square on the left?"]
    )
    return code, capsys.readouterr().err


def test_a_pickle_in_place_of_the_scope_file_is_one_line_naming_the_file(scoped_checkpoint, tmp_path, capsys):
    import pickle

    from mmdemo.app.registry import CheckpointRegistry

    path = _broken_copy(scoped_checkpoint, tmp_path)
    (path / scope.SCOPE_FILE).write_bytes(pickle.dumps({"image_mean": [0.0]}))
    code, err = _cli_error(capsys, path, scoped_checkpoint[1])
    assert code == 2
    assert err.startswith("error: scope.safetensors in checkpoint 'visitor-model' is not a safetensors file")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and str(tmp_path) not in err
    # the app's Predict tab shows the registry's ValueError as the visitor's message
    with pytest.raises(ValueError) as refused:
        CheckpointRegistry(tmp_path / "mine", tmp_path / "shipped").predictor("visitor-model")
    assert f"error: {refused.value}\n" == err


def test_an_unknown_scope_version_is_one_line_without_the_folder(scoped_checkpoint, tmp_path, capsys):
    path = _broken_copy(scoped_checkpoint, tmp_path)
    data = json.loads((path / "config.json").read_text())
    data["scope"]["version"] = 7
    (path / "config.json").write_text(json.dumps(data))
    code, err = _cli_error(capsys, path, scoped_checkpoint[1])
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(tmp_path) not in err
    assert err.startswith("error: config.json in checkpoint 'visitor-model' has scope statistics of version 7,")
    assert "reads versions 1 and 2" in err


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda block: block.update(file="../model.safetensors"), "names '../model.safetensors' as its scope file"),
        (lambda block: block.pop("image_threshold"), "incomplete scope block: no image_threshold"),
        (lambda block: block.update(image_threshold="far"), "a value of the wrong type"),
    ],
)
def test_a_damaged_scope_block_is_named(scoped_checkpoint, tmp_path, change, message):
    path = _broken_copy(scoped_checkpoint, tmp_path)
    data = json.loads((path / "config.json").read_text())
    change(data["scope"])
    (path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as refused:
        scope.load_scope(path)
    assert str(tmp_path) not in str(refused.value)


def test_scope_tensors_that_do_not_fit_are_named(scoped_checkpoint, tmp_path):
    from safetensors.torch import save_file

    path = _broken_copy(scoped_checkpoint, tmp_path)
    save_file({"image_mean": torch.zeros(4), "image_precision": torch.eye(3)}, path / scope.SCOPE_FILE)
    with pytest.raises(ValueError, match="scope.safetensors in checkpoint 'visitor-model' does not hold scope"):
        scope.load_scope(path)
