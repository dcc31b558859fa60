"""Relational questions ("the object closest to / furthest from the red object"): which
object the question refers to and which object the answer is about, shown apart.

The model gives one answer and one whole-question heatmap. For the shipped checkpoint its
benchmark (``bench-sort-of-clevr``, stored in the checkpoint's config) says the raw-attention
peak marks the *referenced* object (the red one), not the answer object. The answer object is
then found from the picture itself: the objects are the blobs that differ from the plain
background, the referenced one is the blob under the peak, and the answer object is the other
blob closest to (furthest from) it. Pure functions on images, no model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

MAX_SIDE = 256  # only small synthetic scenes: a photo has no "objects on a plain background"
BACKGROUND_TOLERANCE = 40  # summed |RGB difference| from the background colour
MIN_OBJECT_PIXELS = 6
MAX_COLOURS = 32  # more distinct object colours than this: not a scene of flat-coloured objects
RELATIONS = {
    "closest": re.compile(r"\b(closest|nearest)\b", re.I),
    "furthest": re.compile(r"\b(furthest|farthest|most distant)\b", re.I),
}

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels


@dataclass
class Relation:
    kind: str  # "closest" | "furthest"
    reference: Box  # the object under the heatmap peak
    answer: Box | None  # the object closest to / furthest from it; None when there is no other object


def relation_kind(question: str) -> str | None:
    """'closest', 'furthest' or None, from the question's wording."""
    for kind, pattern in RELATIONS.items():
        if pattern.search(question or ""):
            return kind
    return None


def find_objects(image: Image.Image) -> list[Box]:
    """Bounding boxes of the flat-coloured blobs that differ from the background (the most
    common border colour), one colour at a time so touching objects stay apart; [] for images
    larger than MAX_SIDE, without a plain background, or with too many colours."""
    if max(image.size) > MAX_SIDE:
        return []
    pixels = np.asarray(image.convert("RGB"), dtype=np.int32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    colours, counts = np.unique(border, axis=0, return_counts=True)
    if counts.max() < 0.5 * len(border):  # no plain background
        return []
    background = colours[counts.argmax()]
    foreground = np.abs(pixels - background).sum(-1) > BACKGROUND_TOLERANCE
    colours, counts = np.unique(pixels[foreground], axis=0, return_counts=True)
    colours = colours[counts >= MIN_OBJECT_PIXELS]
    if len(colours) > MAX_COLOURS:
        return []
    boxes = []
    for colour in colours:
        labels, _ = ndimage.label((pixels == colour).all(-1))
        for index, found in enumerate(ndimage.find_objects(labels), start=1):
            if found is None or (labels[found] == index).sum() < MIN_OBJECT_PIXELS:
                continue
            ys, xs = found
            boxes.append((float(xs.start), float(ys.start), float(xs.stop), float(ys.stop)))
    return boxes


def _centre(box: Box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def relation_objects(image: Image.Image, question: str, peak_xy: tuple[float, float]) -> Relation | None:
    """The referenced object (the one under or nearest the peak) and the answer object, for a
    closest/furthest question about a scene of objects on a plain background; else None."""
    kind = relation_kind(question)
    if kind is None:
        return None
    boxes = find_objects(image)
    if not boxes:
        return None
    px, py = peak_xy

    def distance_to_peak(box: Box) -> float:
        dx = max(box[0] - px, 0.0, px - box[2])
        dy = max(box[1] - py, 0.0, py - box[3])
        return dx * dx + dy * dy

    reference = min(boxes, key=distance_to_peak)
    others = [b for b in boxes if b is not reference]
    if not others:
        return Relation(kind, reference, None)
    rx, ry = _centre(reference)
    squared = [(_centre(b)[0] - rx) ** 2 + (_centre(b)[1] - ry) ** 2 for b in others]
    pick = min if kind == "closest" else max
    return Relation(kind, reference, others[squared.index(pick(squared))])
