"""K folds for out-of-fold predictions that never judge a row by a model that saw its source.

A row's source is its image, the group of a group column (``--group-column``), and every image
that copies it: identical content under another name (``same_content``) or near-identical by
``splits.near_duplicate_groups``. All the rows of one source fall in one fold, as a validation
split keeps them on one side (datasets/splits.py).
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np

from ..datasets.csv_table import Example
from ..datasets.splits import UnionFind, near_duplicate_groups


def sources(examples: list[Example], same_content: dict[Path, Path] | None = None) -> list[str]:
    """Each row's source key: images joined by a shared group value, identical content
    (``same_content``: image -> the first image with its content) or near-identity."""
    sets = UnionFind()
    images = sorted({e.image for e in examples})
    for image, leader in near_duplicate_groups(tuple(images)).items():
        sets.join(("image", image), ("image", leader))
    for image, first in (same_content or {}).items():
        sets.join(("image", image), ("image", first))
    for e in examples:
        if e.group:
            sets.join(("image", e.image), ("group", e.group))
    return [str(sets.find(("image", e.image))) for e in examples]


def assign_folds(keys: list[str], k: int, seed: int = 0) -> np.ndarray:
    """(N,) fold index of each row: whole sources, in a seeded random order, each to the fold
    that has the fewest rows so far (so folds are near equal in rows)."""
    if k < 2:
        raise ValueError(f"folds must be at least 2, got {k}")
    sizes = Counter(keys)
    if len(sizes) < k:
        raise ValueError(f"{len(sizes)} distinct images (or groups): the audit needs at least {k}, one per fold")
    order = sorted(sizes)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda g: -sizes[g])  # large sources first, then the seeded order: balanced folds
    rows = [0] * k
    fold_of = {}
    for g in order:
        f = min(range(k), key=lambda i: (rows[i], i))
        fold_of[g] = f
        rows[f] += sizes[g]
    return np.array([fold_of[key] for key in keys])
