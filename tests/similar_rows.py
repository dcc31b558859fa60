"""Helpers for the similar-examples tests: rows whose images differ enough for an untrained tiny
model to tell them apart (random noise), and a tiny checkpoint indexed on them."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmdemo.datasets.csv_table import read_csv
from mmdemo.inference.similar import save_index
from mmdemo.model.checkpoint import save_checkpoint
from mmdemo.model.classifier import build_model
from mmdemo.training.similar_fit import index_rows

from .conftest import tiny_config

TEXTS = ("what is it?", "is the cat asleep?", "where is the dog?", "a bird on a wire")
LABELS = ("cat", "dog", "bird")


def write_noise_rows(folder: Path, images: int = 12) -> Path:
    """``images`` noise pictures x the four TEXTS, labels cycling through LABELS; the CSV's path."""
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(images):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "img" / f"{i}.png")
        rows += [[f"img/{i}.png", text, LABELS[(i + j) % 3]] for j, text in enumerate(TEXTS)]
    path = folder / "train.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["image", "text", "label"], *rows])
    return path


def indexed_checkpoint(folder: Path, name: str = "indexed") -> tuple[Path, Path]:
    """A tiny checkpoint whose similar-examples index holds the noise rows; (checkpoint, CSV)."""
    csv_path = write_noise_rows(folder / "data")
    torch.manual_seed(0)
    model = build_model(tiny_config(labels=list(LABELS)))
    checkpoint = save_checkpoint(model, folder / name, training={"csv": str(csv_path.resolve())})
    save_index(checkpoint, index_rows(model, read_csv(csv_path).examples, csv_path.parent, "cpu"))
    return checkpoint, csv_path
