"""The baselines on colour images: raw pixels read as RGB (grayscale would erase a colour
question), and the accuracy per question kind beside the overall one."""

import csv

import numpy as np
import pytest
from PIL import Image

from mmdemo.benchmarks.baselines import _pixel_mode, baselines

# red and green of the same luminance (0.299 R + 0.587 G + 0.114 B = 115.4): only the colour tells them apart
RED, GREEN = (180, 80, 128), (80, 131, 128)


def _write_split(folder, name, n, rng):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        red = i % 2 == 0
        noise = rng.normal(0, 10, (8, 8, 1))  # the same on every channel: it moves the luminance, not the hue
        pixels = (np.array(RED if red else GREEN) + noise).clip(0, 255).astype(np.uint8)
        image = f"images/{name}_{i}.png"
        Image.fromarray(pixels, mode="RGB").save(folder / image)
        rows.append([image, "Is it red or green?", "red" if red else "green", "hue"])
        rows.append([image, "Is it a picture?", "yes", "picture"])
    path = folder / f"{name}.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["image", "text", "label", "qtype"], *rows])
    return path


def test_colour_images_are_read_as_rgb_so_a_colour_question_is_learned(tmp_path):
    rng = np.random.default_rng(0)
    train = _write_split(tmp_path, "train", 60, rng)
    test = _write_split(tmp_path, "test", 20, rng)
    assert _pixel_mode(train, test) == "RGB"
    gray = [np.asarray(Image.open(tmp_path / f"images/train_{i}.png").convert("L"), float).mean() for i in (0, 1)]
    assert abs(gray[0] - gray[1]) < 15  # in grayscale the two colours look alike
    result = baselines(train, test, frozen_features=False)
    for name in ("logreg_pixels", "rbf_svm_pixels"):
        assert result[name]["per_question"] == {"hue": 1.0, "picture": 1.0}
        assert result[name]["accuracy"] == 1.0


def test_grayscale_images_stay_grayscale_and_per_question_accuracy_weighs_into_the_overall(tmp_path):
    from mmdemo.datasets.real import make_digits

    out = make_digits(tmp_path / "digits")
    assert _pixel_mode(out["train"], out["test"]) == "L"
    result = baselines(out["train"], out["test"], frozen_features=False)
    per_question = result["logreg_pixels"]["per_question"]
    assert set(per_question) == {"digit", "parity", "greater"}
    # each question kind has the same number of test rows here
    assert np.mean(list(per_question.values())) == pytest.approx(result["logreg_pixels"]["accuracy"])
