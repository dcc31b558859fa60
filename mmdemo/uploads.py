"""Safe handling of uploaded files, and their deleter.

- A zip of images is extracted only if every entry is a plain, unencrypted file with a unique
  relative path inside the folder and the entry count and size are under caps; the sizes are
  counted as bytes are written (a forged header cannot exceed them) and a failure part-way
  removes everything already extracted.
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
import stat
import tempfile
import time
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from .folders import alive, process_tag
from .limits import UPLOAD_PREFIX, upload_root

MAX_ZIP_ENTRIES = 20_000
MAX_ZIP_BYTES = 2 * 1024**3


def extract_zip(
    zip_path: str | os.PathLike,
    dest: str | os.PathLike,
    max_entries: int = MAX_ZIP_ENTRIES,
    max_bytes: int = MAX_ZIP_BYTES,
) -> Path:
    """Extract an uploaded zip safely into ``dest``; ValueError names the entry or limit broken
    (and nothing extracted is left behind)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    before = set(root.iterdir())
    try:
        _extract(zip_path, root, max_entries, max_bytes)
    except BaseException:
        for entry in set(root.iterdir()) - before:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        raise
    return root


def _extract(zip_path, root: Path, max_entries: int, max_bytes: int) -> None:
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, EOFError):
        raise ValueError("the images upload is not a valid zip file") from None
    with archive:
        entries = archive.infolist()
        if len(entries) > max_entries:
            raise ValueError(f"the zip has {len(entries):,} entries, over the limit of {max_entries:,}")
        total = sum(e.file_size for e in entries)
        if total > max_bytes:
            raise ValueError(f"the zip expands to {total / 1e6:,.0f} MB, over the limit of {max_bytes / 1e6:,.0f} MB")
        files: set[str] = set()
        folders: set[str] = set()
        for e in entries:
            name = e.filename
            if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in Path(name).parts:
                raise ValueError(f"zip entry {name!r} has an absolute or '..' path")
            if stat.S_ISLNK(e.external_attr >> 16):
                raise ValueError(f"zip entry {name!r} is a link; only plain files are accepted")
            if e.flag_bits & 0x1:
                raise ValueError(f"zip entry {name!r} is encrypted; upload a zip without a password")
            if not (root / name).resolve().is_relative_to(root):
                raise ValueError(f"zip entry {name!r} leaves the upload folder")
            key = str(PurePosixPath(name.replace("\\", "/"))).lower()  # clashes on case-insensitive disks too
            if e.is_dir():
                folders.add(key)
                continue
            if key in files:
                raise ValueError(f"zip entry {name!r} appears twice in the zip")
            files.add(key)
            folders.update(str(p) for p in PurePosixPath(key).parents if str(p) != ".")
        clash = sorted(files & folders)
        if clash:
            raise ValueError(f"zip entry {clash[0]!r} is both a file and a folder")
        written = 0
        for e in entries:
            if e.is_dir():
                continue
            target = root / e.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(e) as src, open(target, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > max_bytes:
                            raise ValueError(f"the zip expands to over the limit of {max_bytes / 1e6:,.0f} MB")
                        dst.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError) as err:
                raise ValueError(f"zip entry {e.filename!r} is corrupt ({_reason(err)})") from None
            except NotImplementedError:
                raise ValueError(f"zip entry {e.filename!r} uses a compression method that is not supported") from None
            except RuntimeError as err:  # zipfile's "encrypted, password required"
                raise ValueError(f"zip entry {e.filename!r} cannot be read ({_reason(err)})") from None


def _reason(err: BaseException) -> str:
    text = str(err).split(" for file ")[0]  # zipfile appends the entry name
    return text[:120] or type(err).__name__


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
