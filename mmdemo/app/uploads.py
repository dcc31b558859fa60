"""Upload folders, and their deleter.

- A zip of images is extracted by ``datasets.archives.extract_zip``.
- Upload folders live under the system temporary folder with one prefix
  (``limits.UPLOAD_PREFIX``): ``UploadFolder`` removes its folder when the check or job ends
  (unless kept for a job that may resume), ``sweep_uploads`` removes stale ones at start-up.
  Each folder's name carries the process that made it (``<pid>.<start time>``), so a server
  starting in a shared TMPDIR spares the folders of servers still running.
(CSV image paths are confined to the extraction folder by data.read_csv(confine=True).)
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from ..folders import alive, process_tag
from .settings import UPLOAD_PREFIX, upload_root


def make_upload_dir(kind: str = "", root: str | os.PathLike | None = None) -> Path:
    """A new folder under the upload root, named after this process (see ``sweep_uploads``)."""
    prefix = f"{UPLOAD_PREFIX}{process_tag()}-{kind + '-' if kind else ''}"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root or upload_root()))


_TAGGED = re.compile(r"(\d+\.\d+)-")


class UploadFolder:
    """A fresh folder for one upload, removed on ``remove()`` / leaving a ``with`` block unless
    ``keep()`` was called (a job that took ownership of it)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.path = make_upload_dir(root=root)
        self._kept = False

    def keep(self) -> Path:
        self._kept = True
        return self.path

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> UploadFolder:
        return self

    def __exit__(self, *exc) -> None:
        if not self._kept:
            self.remove()


def sweep_uploads(
    root: str | os.PathLike | None = None, keep: set[Path] = frozenset(), older_than_s: float = 0
) -> list[str]:
    """Remove upload folders left by processes that have ended (except ``keep``: data of
    interrupted jobs); those of a running process (another server sharing this TMPDIR, or this
    one) stay. A folder whose name carries no process goes when older than ``older_than_s``."""
    root = Path(root or upload_root())
    removed = []
    now = time.time()
    keep = {Path(k).resolve() for k in keep}
    for entry in root.glob(UPLOAD_PREFIX + "*"):
        tagged = _TAGGED.match(entry.name[len(UPLOAD_PREFIX) :])
        try:
            if tagged and alive(tagged.group(1)):
                continue
            old = tagged or now - entry.stat().st_mtime >= older_than_s
            if entry.is_dir() and entry.resolve() not in keep and old:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        except OSError:
            continue
    return removed
