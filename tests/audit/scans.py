"""A tiny audit fixture written in a test folder: 16x16 grey scans, bright or dark with noise,
each asked two questions whose answers the brightness gives."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

QUESTIONS = {
    "Is it bright or dark?": ("bright", "dark"),
    "Is there ink?": ("no", "yes"),  # bright paper: no ink
}


def write_scans(
    folder: Path, n: int = 40, wrong: tuple[int, ...] = (), copies: tuple[int, ...] = (), seed: int = 0
) -> Path:
    """``n`` scans x 2 questions; the rows of scans in ``wrong`` get the other answer to the
    first question, each scan in ``copies`` is saved again as ``copies/<i>.png`` with its rows.
    ``seed`` draws the noise (the same seed: the same pixels). Returns the CSV (image,text,label)."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        bright = i % 2 == 0
        pixels = rng.normal(210 if bright else 45, 12, (16, 16)).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / "img" / f"{i}.png")
        for k, (question, answers) in enumerate(QUESTIONS.items()):
            answer = answers[0] if bright else answers[1]
            if k == 0 and i in wrong:
                answer = answers[1] if bright else answers[0]
            rows.append([f"img/{i}.png", question, answer])
    if copies:
        (folder / "copies").mkdir(exist_ok=True)
    for i in copies:
        shutil.copyfile(folder / "img" / f"{i}.png", folder / "copies" / f"{i}.png")
        rows += [[f"copies/{i}.png", text, label] for image, text, label in rows if image == f"img/{i}.png"]
    path = folder / "data.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["image", "text", "label"], *rows])
    return path


def wrong_rows(csv_path: Path, wrong: tuple[int, ...]) -> set[int]:
    """Spreadsheet rows (header = 1) of the first question of the scans in ``wrong``."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    first = next(iter(QUESTIONS))
    return {i + 2 for i, r in enumerate(rows) if r["text"] == first and r["image"] in {f"img/{w}.png" for w in wrong}}
