"""Safe handling of uploaded files: a zip of images is extracted only if every entry is a
plain file with a relative path inside the folder and the entry count and total size are under
caps. (CSV image paths are confined to the extraction folder by data.read_csv(confine=True).)
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import zipfile
from pathlib import Path

MAX_ZIP_ENTRIES = 20_000
MAX_ZIP_BYTES = 2 * 1024**3


def extract_zip(
    zip_path: str | os.PathLike,
    dest: str | os.PathLike,
    max_entries: int = MAX_ZIP_ENTRIES,
    max_bytes: int = MAX_ZIP_BYTES,
) -> Path:
    """Extract an uploaded zip safely into ``dest``; ValueError names the entry or limit broken."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise ValueError("the images upload is not a valid zip file") from None
    with archive:
        entries = archive.infolist()
        if len(entries) > max_entries:
            raise ValueError(f"the zip has {len(entries):,} entries, over the limit of {max_entries:,}")
        total = sum(e.file_size for e in entries)
        if total > max_bytes:
            raise ValueError(f"the zip expands to {total / 1e6:,.0f} MB, over the limit of {max_bytes / 1e6:,.0f} MB")
        for e in entries:
            name = e.filename
            if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in Path(name).parts:
                raise ValueError(f"zip entry {name!r} has an absolute or '..' path")
            if stat.S_ISLNK(e.external_attr >> 16):
                raise ValueError(f"zip entry {name!r} is a link; only plain files are accepted")
            if not (root / name).resolve().is_relative_to(root):
                raise ValueError(f"zip entry {name!r} leaves the upload folder")
        for e in entries:
            if e.is_dir():
                continue
            target = root / e.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(e) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return root
