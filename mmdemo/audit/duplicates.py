"""Images that copy each other: identical content under another name (decoded pixels equal,
whatever the file format or name) and near-identical ones, found by the thumbnails of
datasets/splits.py (images of at least MIN_SIDE pixels, also turned upside down) or by the
cosine similarity of their encoder features (every size, so 8x8 scans too)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ..datasets.splits import DUPLICATE_CORRELATION, near_duplicate_groups
from ..imaging import decode_image

SIMILARITY_CHUNK = 1024  # images compared with all the others at once


def content_hash(path: Path) -> str:
    """A digest of the decoded RGB pixels and the size: equal for the same picture saved under
    another name or format (PNG, lossless WebP, an RGB copy of a grayscale scan)."""
    image = decode_image(path)
    digest = hashlib.sha256(f"{image.size}".encode())
    digest.update(np.asarray(image).tobytes())
    return digest.hexdigest()


def same_content(images: list[Path], hashes: dict[Path, str]) -> dict[Path, Path]:
    """image -> the first image in ``images``' order with the same content, for every image
    that has one (the first of each set maps to the second, so a pair names each other)."""
    members: dict[str, list[Path]] = {}
    for image in images:
        members.setdefault(hashes[image], []).append(image)
    other: dict[Path, Path] = {}
    for group in members.values():
        for image in group[1:]:
            other[image] = group[0]
        if len(group) > 1:
            other[group[0]] = group[1]
    return other


def standardise(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``features`` scaled per dimension by ``reference``'s mean and standard deviation, the
    deviation floored at a tenth of the mean one: a dimension that hardly varies in the
    reference (a ReLU channel that is zero for nearly every image) must not blow a small
    difference up into thousands."""
    mean, std = reference.mean(0), reference.std(0) if len(reference) > 1 else torch.ones(reference.shape[1])
    return (features - mean) / std.clamp(min=0.1 * float(std.mean()) + 1e-6)


def unit_rows(features: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Features standardised (by ``reference``'s statistics, default their own), then scaled to
    unit length: a dot product is a cosine that no single large channel dominates."""
    return torch.nn.functional.normalize(standardise(features, features if reference is None else reference), dim=1)


def nearest(a: torch.Tensor, b: torch.Tensor, exclude_self: bool, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``a`` (unit rows), the ``k`` largest cosines with rows of ``b`` and their
    indices, SIMILARITY_CHUNK rows at a time (``exclude_self``: a and b are the same rows)."""
    k = min(k, len(b) - (1 if exclude_self else 0))
    values, indices = [], []
    for start in range(0, len(a), SIMILARITY_CHUNK):
        sims = a[start : start + SIMILARITY_CHUNK] @ b.T
        if exclude_self:
            rows = torch.arange(len(sims))
            sims[rows, rows + start] = -2.0
        v, i = sims.topk(k, dim=1)
        values.append(v)
        indices.append(i)
    return torch.cat(values), torch.cat(indices)


def near_pairs(
    images: list[Path], unit: torch.Tensor, threshold: float, skip: set[Path]
) -> dict[Path, tuple[Path, float]]:
    """image -> (the near-identical image, similarity) within ``images``: thumbnails first
    (splits.near_duplicate_groups; their similarity given as its threshold, a lower bound), then
    unit encoder features (``unit``, one row per image) at ``threshold``. Images in ``skip``
    (identical copies, reported as such) are left out."""
    found: dict[Path, tuple[Path, float]] = {}
    for image, leader in near_duplicate_groups(tuple(images)).items():
        if leader != image and image not in skip and leader not in skip:
            found[image] = (leader, DUPLICATE_CORRELATION)
            found.setdefault(leader, (image, DUPLICATE_CORRELATION))
    if len(images) > 1:
        values, indices = nearest(unit, unit, exclude_self=True)
        for i, image in enumerate(images):
            j = int(indices[i, 0])
            if image in skip or images[j] in skip or image in found or float(values[i, 0]) < threshold:
                continue
            found[image] = (images[j], float(values[i, 0]))
    return found
