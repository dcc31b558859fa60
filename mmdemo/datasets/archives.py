"""Safe extraction of an uploaded zip of images.

A zip is extracted only if every entry is a plain, unencrypted file with a unique relative path
inside the folder and the entry count and size are under caps; the sizes are counted as bytes are
written (a forged header cannot exceed them) and a failure part-way removes everything already
extracted. Errors are ValueErrors naming the entry or the limit.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

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
