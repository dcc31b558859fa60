"""Building a checkpoint's similar-examples index (inference/similar.py) from its training rows.

The rows go through the training engine's feature cache (features.py: each distinct image
decoded and encoded once, in batches) and its scoring pass (scoring.py ``predict_encoded``); a
hook on the head collects what it reads. Thumbnails are made from the image files, while the
run's data is still there (the app deletes an upload after its job). ``finetune`` calls ``save_training_index`` once, after the final save.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..datasets.csv_table import Example
from ..device import resolve_device
from ..imaging import decode_image
from ..inference.similar import (
    MAX_ROWS,
    THUMBNAIL_BYTES,
    THUMBNAIL_SIDE,
    SimilarIndex,
    fit_index,
    head_inputs,
    save_index,
    thumbnail_png,
)
from ..model.classifier import MultimodalClassifier
from .features import Encoded
from .scope_fit import sample_rows
from .scoring import predict_encoded
from .settings import Progress


def index_rows(
    model: MultimodalClassifier,
    examples: list[Example],
    root: Path,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    max_rows: int = MAX_ROWS,
    thumbnail_side: int = THUMBNAIL_SIDE,
    thumbnail_bytes: int = THUMBNAIL_BYTES,
    seed: int = 0,
) -> SimilarIndex:
    """The index of ``examples`` (at most ``max_rows``, a fixed sample beyond); image paths are
    stored relative to ``root`` (the folder the CSV's paths are relative to)."""
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    rows, vectors, encoded = training_vectors(model, sample_rows(examples, max_rows, seed), device, progress)
    # image paths as the CSV gave them; thumbnails of the images in order, while they fit the budget
    root = Path(root).resolve()
    files = list(encoded.image_index)
    paths = [Path(os.path.relpath(image, root)).as_posix() for image in files]
    thumbnails, used = {}, 0
    for path, file in zip(paths, files):
        png = thumbnail_png(decode_image(file), thumbnail_side)  # read as training read it (it checked the size)
        if used + len(png) > thumbnail_bytes:
            break
        thumbnails[path] = png
        used += len(png)
    return fit_index(
        vectors,
        [paths[i] for i in encoded.rows_image.tolist()],
        [e.text for e in rows],
        [row_label(e) for e in rows],
        thumbnails,
        fitted_on={"source_rows": len(examples), "images": len(paths), "thumbnails": len(thumbnails)},
    )


def training_vectors(
    model: MultimodalClassifier, rows: list[Example], device: torch.device, progress: Progress | None = None
) -> tuple[list[Example], torch.Tensor, Encoded]:
    """The rows grouped by image (images in order of first appearance), their (N, D) head inputs
    in that order, and the feature cache they went through."""
    # predict_encoded visits rows grouped by image (a stable sort, here the identity), so the
    # head's inputs arrive in row order
    first: dict[Path, int] = {}
    for e in rows:
        first.setdefault(e.image, len(first))
    rows = sorted(rows, key=lambda e: first[e.image])
    model = model.to(device).eval()
    encoded = Encoded(model, rows, device, progress or (lambda event: None))
    with head_inputs(model) as captured:
        predict_encoded(model, encoded, device)
    vectors = torch.cat(captured)
    assert len(vectors) == len(rows), (len(vectors), len(rows))
    return rows, vectors, encoded


def row_label(example: Example) -> str:
    """A row's label as the index shows it: its label, or with several tasks each task's."""
    if example.labels:
        return "; ".join(f"{task}: {label}" for task, label in example.labels.items() if label)
    return example.label


def save_training_index(
    out: Path, model: MultimodalClassifier, examples: list[Example], csv_path: Path, device=None
) -> SimilarIndex:
    """After fine-tuning: index the run's training rows into its checkpoint folder ``out`` (the
    one call finetune.py makes); the model is left on the CPU, as training leaves it."""
    index = index_rows(model, examples, Path(csv_path).resolve().parent, device)
    model.cpu()
    save_index(out, index)
    return index
