"""Gradio's file cache kept under its bounds (``CacheLimits``: MMDEMO_CACHE_TTL_MIN,
MMDEMO_CACHE_MAX_MB, MMDEMO_CACHE_MIN_AGE_S) while the server runs, in place of Gradio's own sweep
(``gradio_patches.GradioFiles`` says why that one is off). Figures under load: ``python -m mmdemo
stress``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import gradio as gr

from ..app.settings import CacheLimits
from .gradio_patches import GradioFiles

EMPTY_FOLDER_AGE_S = 5  # Gradio makes a folder and writes its file at once: older and empty is left over
CACHE_SWEEP_S = 2  # short, so the cache overshoots its cap by at most ~2 s of traffic
EMPTY_FOLDER_SWEEP_S = 30

log = logging.getLogger(__name__)


def sweep_empty_cache_folders(cache: Path, age_s: float = EMPTY_FOLDER_AGE_S) -> int:
    """Remove folders of the cache (one per file, 4 kB on disk each) left empty for ``age_s``."""
    removed = 0
    now = time.time()
    for folder in cache.glob("*"):
        try:
            if folder.is_dir() and not any(folder.iterdir()) and now - folder.stat().st_mtime > age_s:
                folder.rmdir()
                removed += 1
        except OSError:  # filled or removed meanwhile
            continue
    return removed


def _file_paths(value, found: set[str]) -> None:
    """Paths of the files (FileData dicts, ``{"path": ...}``) anywhere in an event's input data."""
    if isinstance(value, dict):
        if isinstance(value.get("path"), str):
            found.add(os.path.abspath(value["path"]))
        for item in value.values():
            if isinstance(item, (dict, list, tuple)):
                _file_paths(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _file_paths(item, found)


class CacheSweeper:
    """Keeps Gradio's file cache bounded (``CacheLimits``). A file is "used" when uploaded,
    written, or sent in a request (its modification time, touched on each use).

    - Never deleted: a file a queued or running request refers to, the shipped examples
      (``keep_in_cache``), a file used within ``min_age_s``.
    - Deleted when unused for ``ttl_min``.
    - While the cache is over ``max_mb``, the least recently used go first, except what a
      visitor's page still holds: the last file each input of a live session sent (Gradio keeps
      at most MMDEMO_SESSION_CAPACITY sessions), and uploads no request has sent yet (a
      training zip while its visitor picks the columns). Output images, and uploads a page has
      replaced, go first: they make the churn of a steady load.

    Every sweep is guarded: one that fails is logged and the next one runs (Gradio's own stopped
    for good at its first failure). Only files this app tracks are considered (its uploads,
    outputs and example copies), so a cache folder shared with other Gradio apps (the default
    ``/tmp/gradio``) loses nothing of theirs."""

    def __init__(self, demo: gr.Blocks, limits: CacheLimits | None = None):
        self.gradio = GradioFiles(demo)
        self.limits = limits or CacheLimits.from_env()
        self.cache = self.gradio.folder
        self._sent: set[str] = set()  # files some request has sent
        self._missing: set[str] = set()  # tracked but not on disk at the last pass
        self._stop = threading.Event()

    # --- what must stay ------------------------------------------------------------------
    def in_flight(self) -> set[str]:
        """Files referred to by an event waiting in Gradio's queue or running."""
        found: set[str] = set()
        _file_paths(self.gradio.queued_inputs(), found)
        return found

    def held(self) -> set[str]:
        """Files live sessions last sent for their inputs."""
        found: set[str] = set()
        _file_paths(self.gradio.session_inputs(), found)
        return found

    def unsent_uploads(self) -> set[str]:
        return self.gradio.uploads() - self._sent

    def mark_sent(self, inputs) -> None:
        found: set[str] = set()
        _file_paths(inputs, found)
        self._sent.update(p for p in found if p.startswith(os.path.abspath(self.cache) + os.sep))

    def touch(self, inputs) -> None:
        """Mark the cached files a request sends as used now (least recently used goes first)."""
        found: set[str] = set()
        _file_paths(inputs, found)
        for path in found:
            if path.startswith(os.path.abspath(self.cache) + os.sep):
                self._sent.add(path)
                try:
                    os.utime(path)
                except OSError:
                    pass

    # --- the sweep -----------------------------------------------------------------------
    def sweep(self, now: float | None = None, everything: bool = False) -> dict:
        """One pass: delete what the bounds say (``everything``: all but the kept examples, as
        the server stops); return how many files went and what is left."""
        now = time.time() if now is None else now
        ttl_s, cap = self.limits.ttl_min * 60, self.limits.max_mb * 1e6
        kept = self.gradio.kept()
        never = kept if everything else kept | self.in_flight()
        not_for_space = set() if everything else self.held() | self.unsent_uploads()
        files = []  # (last used, bytes on disk, path)
        missing: set[str] = set()
        tracked = self.gradio.tracked()
        self._sent.intersection_update({os.path.abspath(p) for p in tracked})  # one C call; bounded
        for path in tracked:
            try:
                st = os.stat(path)
            except OSError:
                missing.add(path)
                continue
            files.append((st.st_mtime, st.st_blocks * 512 + 4096, path))  # + its own folder
        gone = missing & self._missing  # missing twice: deleted by someone else (an upload
        self._missing = missing - gone  # is listed a moment before its file is in place)
        total = sum(size for _, size, _ in files)
        deleted = 0
        for used, size, path in sorted(files):  # least recently used first
            expired = now - used > ttl_s
            if not (everything or expired or total > cap):
                break  # the rest are newer
            if not everything and not expired and now - used < self.limits.min_age_s:
                break  # the rest are newer still
            key = os.path.abspath(path)
            if key in never or (not expired and key in not_for_space):
                continue
            if self._delete(path, None if everything else used):
                gone.add(path)
                total -= size
                deleted += 1
        if gone:
            self.gradio.forget(gone)
        return {"deleted": deleted, "files": len(files) - deleted, "mb": round(total / 1e6, 2)}

    @staticmethod
    def _delete(path: str, used: float | None) -> bool:
        try:
            if used is not None and os.stat(path).st_mtime != used:  # used again since it was read: keep it
                return False
            os.remove(path)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        try:
            os.rmdir(os.path.dirname(path))  # its per-file folder, when nothing else is in it
        except OSError:
            pass
        return True

    # --- in the background ---------------------------------------------------------------
    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="mmdemo-cache", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        last_folders = time.monotonic()
        seen_running = False
        while not self._stop.wait(CACHE_SWEEP_S):
            if self.gradio.running():
                seen_running = True
            elif seen_running:  # demo.close()
                return
            try:  # never let one bad pass end the sweeping (what happened to Gradio's)
                self.sweep()
                if time.monotonic() - last_folders > EMPTY_FOLDER_SWEEP_S:
                    sweep_empty_cache_folders(self.cache)
                    last_folders = time.monotonic()
            except Exception:  # noqa: BLE001
                log.exception("cache sweep failed (will retry)")
