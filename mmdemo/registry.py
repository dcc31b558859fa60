"""Checkpoints by name for the app: the shipped ones (read-only) plus a writable folder
($MMDEMO_CHECKPOINT_DIR, default checkpoints/) where fine-tuned ones are saved under a
validated name; one cached Predictor per checkpoint.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections import OrderedDict
from pathlib import Path

from .checkpoint import is_checkpoint
from .service import Predictor

REPO_CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def validate_name(name: str) -> str:
    name = (name or "").strip()
    if not NAME_PATTERN.match(name):
        raise ValueError(
            f"checkpoint name {name!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


class CheckpointRegistry:
    """Checkpoint folders by name: the shipped ones and the writable folder's, newest state on
    every call (a fine-tuned checkpoint shows up as soon as it is saved)."""

    def __init__(
        self,
        writable_dir: str | os.PathLike | None = None,
        shipped_dir: str | os.PathLike = REPO_CHECKPOINTS,
        device: str | None = None,
        cache_size: int = 3,
    ):
        self.writable_dir = Path(writable_dir or os.environ.get("MMDEMO_CHECKPOINT_DIR") or REPO_CHECKPOINTS)
        self.shipped_dir = Path(shipped_dir)
        self.device = device
        self._predictors: OrderedDict[tuple[str, float], Predictor] = OrderedDict()
        self._lock = threading.Lock()
        self.cache_size = cache_size

    def paths(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for folder in (self.shipped_dir, self.writable_dir):
            if folder.is_dir():
                for path in sorted(folder.iterdir()):
                    if path.is_dir() and not path.name.startswith(".") and is_checkpoint(path):
                        found.setdefault(path.name, path)
        return found

    def names(self) -> list[str]:
        return list(self.paths())

    def path(self, name: str) -> Path:
        paths = self.paths()
        if name not in paths:
            raise ValueError(f"unknown checkpoint {name!r}; available: {', '.join(paths) or 'none'}")
        return paths[name]

    def predictor(self, name: str) -> Predictor:
        """A predictor per checkpoint, cached (keyed by the weights' mtime, so a replaced
        checkpoint is reloaded)."""
        path = self.path(name)
        key = (str(path), (path / "model.safetensors").stat().st_mtime)
        with self._lock:
            if key in self._predictors:
                self._predictors.move_to_end(key)
                return self._predictors[key]
            predictor = Predictor.from_checkpoint(path, self.device)
            self._predictors[key] = predictor
            while len(self._predictors) > self.cache_size:
                self._predictors.popitem(last=False)
            return predictor

    def zip(self, name: str, out_dir: str | os.PathLike) -> Path:
        """The checkpoint folder as a zip (for download)."""
        path = self.path(name)
        base = Path(out_dir) / name
        return Path(shutil.make_archive(str(base), "zip", root_dir=path.parent, base_dir=path.name))
