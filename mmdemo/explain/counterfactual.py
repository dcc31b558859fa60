"""Counterfactual edits of an input: blank a square of the image (pure functions on PIL
images, no model), so a stakeholder can ask "what if that object were not there?"."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def background_colour(image: Image.Image) -> tuple[int, int, int]:
    """The median colour of the image's border: what a blanked region is filled with, so it
    looks like empty background (white for a Sort-of-CLEVR scene)."""
    a = np.asarray(image.convert("RGB"))
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return tuple(int(v) for v in np.median(border, axis=0))


def blank_squares(image: Image.Image, centres: list[tuple[float, float]], side: int) -> Image.Image:
    """A copy of ``image`` with a ``side`` x ``side`` square of background colour centred on
    each (x, y) in ``centres`` (pixels of this image)."""
    out = image.convert("RGB").copy()
    if not centres:
        return out
    fill = background_colour(image)
    draw = ImageDraw.Draw(out)
    half = max(1, int(side)) / 2
    for x, y in centres:
        draw.rectangle((round(x - half), round(y - half), round(x + half) - 1, round(y + half) - 1), fill=fill)
    return out
