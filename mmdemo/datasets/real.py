"""Real-data benchmarks built offline from data that scikit-learn and scikit-image bundle.

``python -m mmdemo make-real-benchmark --kind digits --out data/digits`` writes
``train.csv`` and ``test.csv`` (image,text,label) plus the images:

- ``digits``: scikit-learn's 1,797 8x8 grayscale scans of handwritten digits, three questions
  per scan ("What digit is this?", "Is it even or odd?", "Is it greater than four?"), 14
  answers; split by scan, so no scan is in both files.
- ``photo-patches``: 32x32 grayscale patches of scikit-image's bundled photos, four questions
  per patch about what is where (which half is brighter, left or right / top or bottom; how
  bright the patch is; how much of it is edge), 9 answers; split by source photo, so no photo
  is in both files.
- ``photo-crops``: 96x96 colour crops of ten bundled colour photos (eight from scikit-image,
  scikit-learn's two), each crop maybe turned upside down and maybe made black and white, three
  questions per crop (what is shown, is it upside down, colour or black and white), 14 answers.
  Split by part of each photo: training crops come from the left 60 % of its width, test crops
  from the right 40 %, so what a photo shows can be learnt while no test pixel was seen in
  training; ``source`` names the photo and the part (``astronaut:left``).

None is synthetic: the pixels are real scans and photos; only the questions are templated.
The simple models to compare against are in mmdemo/benchmarks/baselines.py
(``make-real-benchmark --baselines``).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

DIGIT_QUESTIONS = {
    "digit": ("What digit is this?", lambda d: str(d)),
    "parity": ("Is it even or odd?", lambda d: "even" if d % 2 == 0 else "odd"),
    "greater": ("Is it greater than four?", lambda d: "yes" if d > 4 else "no"),
}

# scikit-image's bundled photos (grayscale or converted), each its own source
PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "checkerboard",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "horse",
    "moon",
    "page",
    "rocket",
    "text",
    "clock",
    "immunohistochemistry",
    "hubble_deep_field",
    "motorcycle_left",
    "chelsea",
    "retina",
)


def _write(out: Path, name: str, rows: list[list[str]]) -> Path:
    path = out / name
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "text", "label", "qtype", "source"])
        writer.writerows(rows)
    return path


def make_digits(out: Path, test_fraction: float = 0.25, seed: int = 0) -> dict:
    from sklearn.datasets import load_digits

    digits = load_digits()
    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    order = list(range(len(digits.images)))
    random.Random(seed).shuffle(order)
    n_test = round(len(order) * test_fraction)
    test = set(order[:n_test])
    splits: dict[str, list] = {"train": [], "test": []}
    for i in order:
        pixels = (digits.images[i] / 16.0 * 255).round().astype(np.uint8)  # 0..16 -> 0..255
        name = f"images/{i:04d}.png"
        Image.fromarray(255 - pixels, mode="L").save(out / name)  # dark ink on white paper
        split = "test" if i in test else "train"
        for qtype, (question, answer) in DIGIT_QUESTIONS.items():
            splits[split].append([name, question, answer(int(digits.target[i])), qtype, str(i)])
    return {s: str(_write(out, f"{s}.csv", rows)) for s, rows in splits.items()} | {
        s + "_rows": len(rows) for s, rows in splits.items()
    }


def _photo(name: str) -> np.ndarray:
    from skimage import data
    from skimage.color import rgb2gray

    image = getattr(data, name)()
    if image.ndim == 3:
        image = rgb2gray(image[..., :3]) * 255
    return np.asarray(image, dtype=np.float64)


def _patch_answers(p: np.ndarray) -> dict[str, str]:
    h, w = p.shape
    left, right = p[:, : w // 2].mean(), p[:, w // 2 :].mean()
    top, bottom = p[: h // 2].mean(), p[h // 2 :].mean()
    gy, gx = np.gradient(p)
    edges = float((np.hypot(gx, gy) > 20).mean())
    mean = p.mean()
    return {
        "lr": "left" if left > right else "right",
        "tb": "top" if top > bottom else "bottom",
        "bright": "dark" if mean < 85 else ("medium" if mean < 170 else "bright"),
        "edges": "smooth" if edges < 0.1 else "textured",
    }


PATCH_QUESTIONS = {
    "lr": "Which half is brighter, left or right?",
    "tb": "Which half is brighter, top or bottom?",
    "bright": "Is the patch dark, medium or bright?",
    "edges": "Is the patch smooth or textured?",
}


def make_photo_patches(out: Path, size: int = 32, per_photo: int = 120, test_photos: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    photos = list(PHOTOS)
    random.Random(seed).shuffle(photos)
    test = set(photos[:test_photos])
    splits: dict[str, list] = {"train": [], "test": []}
    for name in photos:
        try:
            image = _photo(name)
        except Exception:  # a photo this scikit-image version lacks or cannot fetch offline
            continue
        h, w = image.shape
        for k in range(per_photo):
            y, x = int(rng.integers(0, h - size)), int(rng.integers(0, w - size))
            patch = image[y : y + size, x : x + size]
            file = f"images/{name}_{k:03d}.png"
            Image.fromarray(patch.clip(0, 255).astype(np.uint8), mode="L").save(out / file)
            for qtype, answer in _patch_answers(patch).items():
                splits["test" if name in test else "train"].append([file, PATCH_QUESTIONS[qtype], answer, qtype, name])
    return {s: str(_write(out, f"{s}.csv", rows)) for s, rows in splits.items()} | {
        s + "_rows": len(rows) for s, rows in splits.items()
    }


# the bundled colour photos and what each shows; scikit-image's ``cat`` is chelsea again and
# ``logo`` has an alpha channel, so neither is here
COLOUR_PHOTOS = {
    "astronaut": "astronaut",
    "chelsea": "cat",
    "coffee": "coffee",
    "rocket": "rocket",
    "hubble_deep_field": "galaxies",
    "immunohistochemistry": "cells",
    "retina": "retina",
    "colorwheel": "colour wheel",
    "china": "temple",  # scikit-learn's sample images
    "flower": "flower",
}

CROP_QUESTIONS = {
    "subject": "What is shown in this picture?",
    "upside": "Is the picture upside down?",
    "colour": "Is this picture in colour or black and white?",
}

TRAIN_WIDTH = 0.6  # training crops from the left 60 % of each photo, test crops from the rest


def _colour_photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 from scikit-image's data or scikit-learn's sample images."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        image = load_sample_image(f"{name}.jpg")
    else:
        from skimage import data

        image = getattr(data, name)()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} is not an RGB photo: {image.shape}")
    return image.astype(np.uint8)


def _crop_boxes(height: int, width: int, part: str, n: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """``n`` squares (x, y, side) inside one part of the photo, sides 25-50 % of its shorter
    side clipped to fit the part, so no square crosses the cut between the parts."""
    cut = int(width * TRAIN_WIDTH)
    x0, x1 = (0, cut) if part == "left" else (cut, width)
    short = min(height, width)
    boxes = []
    for _ in range(n):
        side = int(rng.integers(round(short * 0.25), round(short * 0.5) + 1))
        side = min(side, x1 - x0, height)
        x = int(rng.integers(x0, x1 - side + 1))
        y = int(rng.integers(0, height - side + 1))
        boxes.append((x, y, side))
    return boxes


def _crop(photo: np.ndarray, box: tuple[int, int, int], size: int, upside: bool, gray: bool) -> Image.Image:
    x, y, side = box
    image = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.LANCZOS)
    if upside:
        image = image.transpose(Image.ROTATE_180)
    if gray:
        image = ImageOps.grayscale(image).convert("RGB")  # saved as RGB like the colour crops
    return image


def make_photo_crops(out: Path, size: int = 96, per_photo: tuple[int, int] = (120, 40), seed: int = 0) -> dict:
    """Crops of the bundled colour photos: ``per_photo`` = (training crops from each photo's
    left part, test crops from its right part); the same seed writes the same files."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    splits: dict[str, list] = {"train": [], "test": []}
    for name, subject in COLOUR_PHOTOS.items():
        try:
            photo = _colour_photo(name)
        except Exception:  # a photo this library version lacks or cannot load offline
            continue
        height, width = photo.shape[:2]
        for split, part, n in (("train", "left", per_photo[0]), ("test", "right", per_photo[1])):
            for k, box in enumerate(_crop_boxes(height, width, part, n, rng)):
                upside, gray = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
                image = _crop(photo, box, size, upside, gray)
                pixels = np.asarray(image)
                # the answer is what the saved picture is: a colour crop of a gray region is black and white
                colour = not (pixels[..., 0] == pixels[..., 1]).all() or not (pixels[..., 1] == pixels[..., 2]).all()
                file = f"images/{name}_{part}_{k:03d}.png"
                image.save(out / file)
                answers = {
                    "subject": subject,
                    "upside": "yes" if upside else "no",
                    "colour": "colour" if colour else "black and white",
                }
                for qtype, answer in answers.items():
                    splits[split].append([file, CROP_QUESTIONS[qtype], answer, qtype, f"{name}:{part}"])
    return {s: str(_write(out, f"{s}.csv", rows)) for s, rows in splits.items()} | {
        s + "_rows": len(rows) for s, rows in splits.items()
    }
