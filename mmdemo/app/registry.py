"""Checkpoints by name for the app: the shipped ones (read-only, always) plus each visitor's
own, one cached Predictor per checkpoint.

Layout of the writable folder (``limits.checkpoint_dir()``, never inside the shipped one)::

    <writable>/<owner>/<name>/{config.json, model.safetensors, README.md}

An owner is an id decided on the server (``owner_id``): the hash of a visitor's secret token,
a signed-in Hugging Face user, or ``shared`` in shared mode. A visitor sees the shipped
checkpoints and their own; only the owner can overwrite, delete or download theirs. A shipped
name can never be taken. Anonymous owners' checkpoints expire (``Limits.anonymous_ttl_hours``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path

from ..folders import recover
from ..inference.predictor import Predictor
from ..model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, is_checkpoint, is_complete
from ..training.finetune import RESUME_STATE_FILE, RESUME_SUFFIX, is_resume_state
from .settings import Limits, checkpoint_dir

REPO_CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
OWNER_PATTERN = re.compile(r"^(shared|a-[0-9a-f]{32}|hf-[A-Za-z0-9._-]{1,96})$")
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{32,128}$")
SHARED = "shared"

log = logging.getLogger(__name__)


def validate_name(name: str) -> str:
    name = (name or "").strip() if isinstance(name, str) else ""
    if not NAME_PATTERN.match(name):
        raise ValueError(
            f"checkpoint name {name!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def owner_id(token: str) -> str:
    """The owner a secret token stands for: a hash, so the folder name reveals no token."""
    if not isinstance(token, str) or not TOKEN_PATTERN.match(token):
        raise ValueError(
            "the owner token is not valid (32-128 letters, digits, '-' or '_', as /start_finetune returns it)"
        )
    return "a-" + hashlib.sha256(token.encode()).hexdigest()[:32]


def hf_owner(username: str) -> str:
    return "hf-" + re.sub(r"[^A-Za-z0-9._-]", "_", username)[:96]


def _check_owner(owner: str | None) -> str | None:
    if owner is not None and not OWNER_PATTERN.match(owner):
        raise ValueError("invalid owner")  # internal: owners are made by owner_id/hf_owner only
    return owner


class CheckpointRegistry:
    """Checkpoint folders by name, newest state on every call (a fine-tuned checkpoint shows up
    as soon as it is saved). ``owner=None`` sees the shipped checkpoints only."""

    def __init__(
        self,
        writable_dir: str | os.PathLike | None = None,
        shipped_dir: str | os.PathLike = REPO_CHECKPOINTS,
        device: str | None = None,
        cache_size: int = 3,
        limits: Limits | None = None,
    ):
        self.shipped_dir = Path(shipped_dir)
        self.writable_dir = Path(writable_dir) if writable_dir else checkpoint_dir()
        shipped, writable = self.shipped_dir.resolve(), self.writable_dir.resolve()
        if writable.is_relative_to(shipped) or shipped.is_relative_to(writable):
            raise ValueError(
                "the writable checkpoint folder must be outside the shipped checkpoints "
                f"(MMDEMO_CHECKPOINT_DIR={self.writable_dir.name!r} overlaps {self.shipped_dir.name!r})"
            )
        self.limits = limits or Limits.from_env()
        self.device = device
        self._predictors: OrderedDict[tuple[str, float], Predictor] = OrderedDict()
        self._lock = threading.Lock()
        self.cache_size = cache_size

    # --- listing -------------------------------------------------------------------------
    def shipped(self) -> dict[str, Path]:
        return _checkpoints_in(self.shipped_dir)

    def is_shipped(self, name: str) -> bool:
        return (self.shipped_dir / name).exists()

    def owned(self, owner: str | None) -> dict[str, Path]:
        if _check_owner(owner) is None:
            return {}
        return _checkpoints_in(self.writable_dir / owner)

    def paths(self, owner: str | None = None) -> dict[str, Path]:
        found = self.shipped()
        for name, path in self.owned(owner).items():
            found.setdefault(name, path)
        return found

    def names(self, owner: str | None = None) -> list[str]:
        return list(self.paths(owner))

    def path(self, name: str, owner: str | None = None) -> Path:
        paths = self.paths(owner)
        if name not in paths:
            raise ValueError(f"unknown checkpoint {name!r}; available: {', '.join(paths) or 'none'}")
        return paths[name]

    def is_loaded(self, name: str, owner: str | None = None) -> bool:
        """Whether ``predictor(name, owner)`` answers from the cache (no load from disk)."""
        try:
            path = self.path(name, owner)
            key = (str(path), (path / WEIGHTS_FILE).stat().st_mtime)
        except (ValueError, OSError):
            return True  # nothing to load: predictor() refuses it at once
        # no lock: a load in progress holds it for seconds, and a membership test is atomic
        return key in self._predictors

    def predictor(self, name: str, owner: str | None = None) -> Predictor:
        """A predictor per checkpoint, cached (keyed by the weights' mtime, so a replaced
        checkpoint is reloaded)."""
        path = self.path(name, owner)
        key = (str(path), (path / WEIGHTS_FILE).stat().st_mtime)
        with self._lock:
            if key in self._predictors:
                self._predictors.move_to_end(key)
                return self._predictors[key]
            predictor = Predictor.from_checkpoint(path, self.device)
            self._predictors[key] = predictor
            while len(self._predictors) > self.cache_size:
                self._predictors.popitem(last=False)
            return predictor

    # --- writing (owners only) -----------------------------------------------------------
    def target(self, name: str, owner: str, overwrite: bool = False) -> Path:
        """The folder a new checkpoint ``name`` of ``owner`` will be saved to, after every check:
        valid name, not shipped, not existing unless ``overwrite``, within the owner's quota."""
        name = validate_name(name)
        if self.is_shipped(name):
            raise ValueError(f"{name!r} is a shipped checkpoint and cannot be overwritten; choose another name")
        owned = self.owned(_check_owner(owner))
        if name in owned and not overwrite:
            raise ValueError(f"a checkpoint named {name!r} already exists; choose another name or confirm overwriting")
        if name not in owned and len(owned) >= self.limits.max_checkpoints:
            raise ValueError(
                f"you have {len(owned)} checkpoints, the limit per visitor on this server; delete one first"
            )
        used = self.disk_usage(owner)
        if used > self.limits.max_visitor_disk_mb * 1e6:
            raise ValueError(
                f"your checkpoints use {used / 1e6:,.0f} MB, over the limit of {self.limits.max_visitor_disk_mb:,} MB;"
                " delete one first"
            )
        return self.writable_dir / owner / name

    def delete(self, name: str, owner: str) -> None:
        name = validate_name(name)
        if self.is_shipped(name):
            raise ValueError(f"{name!r} is a shipped checkpoint and cannot be deleted")
        owned = self.owned(_check_owner(owner))
        if name not in owned:
            raise ValueError(f"you have no checkpoint named {name!r}")
        shutil.rmtree(owned[name])

    def disk_usage(self, owner: str) -> int:
        folder = self.writable_dir / owner
        return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0

    def zip(self, name: str, out_dir: str | os.PathLike, owner: str | None = None) -> Path:
        """The checkpoint folder as a zip (for download): shipped ones, or the owner's own."""
        path = self.path(name, owner)
        base = Path(out_dir) / name
        return Path(shutil.make_archive(str(base), "zip", root_dir=path.parent, base_dir=path.name))

    # --- housekeeping --------------------------------------------------------------------
    def clean(self, now: float | None = None) -> list[str]:
        """At start-up: tidy what interrupted saves left (folders.recover: a live process's
        copies stay, a missing checkpoint or resume state gets back its newest complete copy,
        the rest of an ended process's copies go) and remove anonymous visitors' checkpoints
        older than their time to live. Returns what was removed (relative to the writable
        folder); what was brought back is logged."""
        removed: list[str] = []
        if not self.writable_dir.is_dir():
            return removed
        now = time.time() if now is None else now
        ttl = self.limits.anonymous_ttl_hours * 3600
        for owner in self.writable_dir.iterdir():
            if not owner.is_dir() or not OWNER_PATTERN.match(owner.name):
                continue
            gone, back = recover(owner, _complete_copy, _copy_time)
            removed += [f"{owner.name}/{name}" for name in gone]
            for name in back:
                log.warning("start-up: %s/%s brought back from the copy an interrupted save left", owner.name, name)
            for entry in owner.iterdir():
                expired = (
                    owner.name.startswith("a-")
                    and is_checkpoint(entry)
                    and now - (entry / CONFIG_FILE).stat().st_mtime > ttl
                )
                if entry.is_dir() and expired:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(f"{owner.name}/{entry.name}")
        return removed


def _complete_copy(target: str, copy: Path) -> bool:
    """Whether a leftover is a whole copy of ``target``: a run's resume state (``.<name>.resume``,
    its state.json written last) or a checkpoint."""
    if target.startswith(".") and target.endswith(RESUME_SUFFIX):
        return is_resume_state(copy)
    return is_complete(copy)


def _copy_time(copy: Path) -> float:
    """When a copy's content was made: its weights' (or resume state's) modification time."""
    for name in (WEIGHTS_FILE, RESUME_STATE_FILE):
        if (copy / name).is_file():
            return (copy / name).stat().st_mtime
    return copy.stat().st_mtime


def _checkpoints_in(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {
        p.name: p
        for p in sorted(folder.iterdir())
        if p.is_dir() and not p.name.startswith(".") and NAME_PATTERN.match(p.name) and is_checkpoint(p)
    }
