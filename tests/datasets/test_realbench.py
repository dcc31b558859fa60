"""Real-data benchmark builders: real scans / photos, no image (or source photo, or part of a
photo) in both splits."""

import csv

import numpy as np
from PIL import Image

from mmdemo.datasets.real import (
    COLOUR_PHOTOS,
    CROP_QUESTIONS,
    _crop,
    _crop_boxes,
    make_digits,
    make_photo_crops,
    make_photo_patches,
)


def _rows(path):
    return list(csv.DictReader(open(path, newline="")))


def test_digits_benchmark_splits_by_scan_with_14_answers(tmp_path):
    out = make_digits(tmp_path / "digits")
    train, test = _rows(out["train"]), _rows(out["test"])
    assert len(train) + len(test) == 1797 * 3
    assert not {r["image"] for r in train} & {r["image"] for r in test}
    assert len({r["label"] for r in train}) == 14
    assert {r["text"] for r in train} == {"What digit is this?", "Is it even or odd?", "Is it greater than four?"}


def test_photo_patches_split_by_source_photo(tmp_path):
    out = make_photo_patches(tmp_path / "patches", per_photo=2, test_photos=3)
    train, test = _rows(out["train"]), _rows(out["test"])
    assert train and test
    assert not {r["source"] for r in train} & {r["source"] for r in test}
    assert {r["label"] for r in train + test} <= {
        "left", "right", "top", "bottom", "dark", "medium", "bright", "smooth", "textured"
    }  # fmt: skip


def test_photo_crops_split_by_part_of_each_photo_with_three_answers_per_crop(tmp_path):
    out = make_photo_crops(tmp_path / "crops", size=32, per_photo=(6, 3))
    train, test = _rows(out["train"]), _rows(out["test"])
    assert {r["source"].split(":")[1] for r in train} == {"left"}
    assert {r["source"].split(":")[1] for r in test} == {"right"}  # no test crop from a training part
    photos = {r["source"].split(":")[0] for r in train}
    assert photos == {r["source"].split(":")[0] for r in test} and len(photos) >= 8
    assert len(train) == len(photos) * 6 * 3 and len(test) == len(photos) * 3 * 3
    answers: dict[str, dict[str, str]] = {}
    for r in train + test:
        answers.setdefault(r["image"], {})[r["qtype"]] = r["label"]
        assert r["text"] == CROP_QUESTIONS[r["qtype"]]
    assert all(set(a) == {"subject", "upside", "colour"} for a in answers.values())
    for r in train + test:
        if r["qtype"] == "subject":
            assert r["label"] == COLOUR_PHOTOS[r["source"].split(":")[0]]
    for image, a in answers.items():
        pixels = np.asarray(Image.open(tmp_path / "crops" / image)).astype(int)
        assert pixels.shape == (32, 32, 3)
        gray = (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
        assert gray == (a["colour"] == "black and white"), image
    kinds = {(a["upside"], a["colour"]) for a in answers.values()}
    assert kinds == {("yes", "colour"), ("yes", "black and white"), ("no", "colour"), ("no", "black and white")}


def test_photo_crops_are_the_same_for_a_seed_and_differ_for_another(tmp_path):
    def written(folder, seed):
        out = make_photo_crops(folder, size=16, per_photo=(2, 1), seed=seed)
        files = sorted((folder / "images").iterdir())
        return open(out["train"]).read(), open(out["test"]).read(), [f.read_bytes() for f in files]

    first = written(tmp_path / "a", 0)
    assert written(tmp_path / "b", 0) == first
    assert written(tmp_path / "c", 1)[2] != first[2]


def test_crop_boxes_stay_inside_their_part_and_upside_down_is_a_half_turn():
    rng = np.random.default_rng(0)
    height, width = 300, 451
    cut = int(width * 0.6)
    short = min(height, width)
    for part, (x0, x1) in (("left", (0, cut)), ("right", (cut, width))):
        for x, y, side in _crop_boxes(height, width, part, 200, rng):
            assert x0 <= x and x + side <= x1 and 0 <= y and y + side <= height
            assert side <= round(short * 0.5) and (side >= round(short * 0.25) or side == x1 - x0)
    photo = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    box = (10, 20, 100)
    upright = np.asarray(_crop(photo, box, 32, upside=False, gray=False))
    upside_down = np.asarray(_crop(photo, box, 32, upside=True, gray=False))
    assert (upside_down[::-1, ::-1] == upright).all() and not (upside_down == upright).all()
    gray = np.asarray(_crop(photo, box, 32, upside=False, gray=True)).astype(int)
    assert (gray[..., 0] == gray[..., 2]).all()
    assert (
        np.abs(gray[..., 0] - upright.astype(float) @ [0.299, 0.587, 0.114]).max() <= 1
    )  # luminance of the colour crop
