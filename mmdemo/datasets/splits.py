"""How labelled rows are split into training and validation rows without sharing an image.

A question about an image the model trained on says little about new images: its validation
score would be the training score. So a split holds out whole images, every row of each, and
the same seed gives the same split (training, the out-of-scope fitting after it and a resumed
run all see the rows the first run saw).
"""

from __future__ import annotations

import random

from .csv_table import Dataset, Example


def split_by_image(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Hold out ``fraction`` of the images (with all their rows) for validation."""
    images = sorted({e.image for e in examples})
    rng = random.Random(seed)
    rng.shuffle(images)
    n_val = max(1, round(len(images) * fraction)) if len(images) > 1 else 0
    val_images = set(images[:n_val])
    return [e for e in examples if e.image not in val_images], [e for e in examples if e.image in val_images]


def train_val_split(
    dataset: Dataset, val_dataset: Dataset | None, val_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """The training and validation rows of a run: ``val_dataset``'s rows when one is given,
    else a ``val_fraction`` split of ``dataset`` by image (``split_by_image``)."""
    if val_dataset is not None:
        return dataset.examples, val_dataset.examples
    return split_by_image(dataset.examples, val_fraction, seed)
