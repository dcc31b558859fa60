"""The Predict tab's similar training examples: a checkpoint's index (inference/similar.py), cached
per checkpoint, queried with the answered image and question, and each example's picture.

A picture comes from the index's own thumbnails, else, for a checkpoint trained from the command
line, from the training CSV's folder (its training record's ``csv``): only a file the index names,
only inside that folder, decoded within the pixel limit and shrunk to a thumbnail in memory. No
path reaches the browser; a missing picture leaves the example's text and label.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from ..imaging import decode_image
from ..inference.similar import INDEX_JSON, THUMBNAIL_SIDE, Neighbour, SimilarIndex, load_index, similar_to
from .registry import CheckpointRegistry

K = 5  # examples shown
CACHE_SIZE = 8  # indexes kept in memory (a 20,000-row index takes about 3 MB)
ANSWER_CACHE_SIZE = 64  # recent answers kept (a few small pictures each)


class SimilarExample(NamedTuple):
    neighbour: Neighbour
    picture: Image.Image | None  # a thumbnail, or None when the index has none and no file is found


class SimilarExamples:
    """Indexes and recent answers, cached: a word click or an opacity change after an answer asks
    again for the same input and gets the same rows without a model call."""

    def __init__(self, registry: CheckpointRegistry, max_pixels: int):
        self.registry, self.max_pixels = registry, max_pixels
        self._indexes: OrderedDict[tuple, tuple[SimilarIndex | None, Path | None]] = OrderedDict()
        self._answers: OrderedDict[tuple, list[SimilarExample]] = OrderedDict()
        self._lock = threading.Lock()

    def find(self, checkpoint: str, owner: str | None, image: str, text: str, k: int = K) -> list[SimilarExample]:
        """The ``k`` training rows of ``checkpoint`` most similar to an image file and a text,
        with their pictures; [] for a checkpoint without an index."""
        path = self.registry.path(checkpoint, owner)
        index, root, key = self._index(path)
        if index is None:
            return []
        asked = (key, str(image), text, k)
        with self._lock:
            if asked in self._answers:
                return self._answers[asked]
        decoded = decode_image(image, name="the image", max_pixels=self.max_pixels)
        model = self.registry.predictor(checkpoint, owner).model
        found = [SimilarExample(n, self._picture(index, n, root)) for n in similar_to(model, index, decoded, text, k)]
        with self._lock:
            self._answers[asked] = found
            while len(self._answers) > ANSWER_CACHE_SIZE:
                self._answers.popitem(last=False)
        return found

    def _index(self, path: Path) -> tuple[SimilarIndex | None, Path | None, tuple | None]:
        """The checkpoint's index, the folder its images may be read from and the cache key, cached
        by the index file's mtime (a checkpoint replaced by a new training run is read again)."""
        try:
            key = (str(path), (path / INDEX_JSON).stat().st_mtime_ns)
        except OSError:
            return None, None, None
        with self._lock:
            if key in self._indexes:
                self._indexes.move_to_end(key)
                return (*self._indexes[key], key)
        found = load_index(path), _image_root(path)
        with self._lock:
            self._indexes[key] = found
            while len(self._indexes) > CACHE_SIZE:
                self._indexes.popitem(last=False)
        return (*found, key)

    def _picture(self, index: SimilarIndex, neighbour: Neighbour, root: Path | None) -> Image.Image | None:
        stored = index.thumbnail(neighbour.row)
        if stored is not None or root is None:
            return stored
        file = (root / neighbour.image).resolve()
        if not file.is_relative_to(root) or not file.is_file():
            return None
        try:
            picture = decode_image(file, max_pixels=self.max_pixels)
        except ValueError:
            return None
        picture.thumbnail((THUMBNAIL_SIDE * 2, THUMBNAIL_SIDE * 2), Image.BILINEAR)
        return picture


def _image_root(path: Path) -> Path | None:
    """The training CSV's folder of a checkpoint trained from the command line, if it is still there."""
    try:
        csv = json.loads((path / "config.json").read_text()).get("training", {}).get("csv")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(csv, str) or not Path(csv).is_absolute():
        return None
    root = Path(csv).parent.resolve()
    return root if root.is_dir() else None
