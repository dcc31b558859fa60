"""Folders replaced in one atomic step, and the process tags their leftovers carry.

A folder (a checkpoint, a run's resume state) is written completely under a hidden temporary
sibling, flushed to disk, then swapped with the one it replaces in one step: Linux's
``renameat2(RENAME_EXCHANGE)`` (the old copy ends up under the temporary name and is then
deleted). Where the call or the file system refuses it, the fallback renames the old copy
aside first, so at every instant at least one complete copy exists under some name.

Every temporary name carries the process that made it (``process_tag``: pid and start time,
so a reused pid does not pass for the old process): ``.<target>.<pid>.<start>.<random>.tmp``
for a new copy, ``...old`` for an old one set aside. ``recover`` runs at start-up: it spares
what a live process is writing, brings back the newest complete copy when the target is
missing (a save killed between the fallback's two renames), and deletes the rest.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

AT_FDCWD = -100
RENAME_EXCHANGE = 2
# what renameat2 answers when the kernel lacks it or the file system cannot exchange
REFUSED = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


def process_tag(pid: int | None = None) -> str:
    """``<pid>.<start time>`` of a process (this one by default): with the start time a reused
    pid (a restarted container's server is often pid 1 again) does not pass for the old process."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}.{start_time(pid)}"


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the name (state first), None where it is missing."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat_line.rsplit(")", 1)[1].split()  # the name may hold spaces or ')'


def start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (Linux), 0 where /proc is missing."""
    fields = _stat(pid)
    return int(fields[19]) if fields else 0  # field 22


def alive(tag: str) -> bool:
    """Whether the process a ``process_tag`` names is still running."""
    pid, start = (int(x) for x in tag.split("."))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    return start_time(pid) == start


def still_running(tag: str) -> bool:
    """Whether the process of ``tag`` still runs: alive and not a zombie (an ended child not yet
    waited for is one). Where /proc is missing, alive is all there is to know."""
    if not alive(tag):
        return False
    fields = _stat(int(tag.split(".")[0]))
    return fields is None or fields[0] != "Z"


def _load_renameat2() -> Callable | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28+
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the system refuses to (then
    nothing moved), OSError for any other failure."""
    if _renameat2 is None:
        return False
    if _renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in REFUSED:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def new_folder(target: Path) -> Path:
    """An empty hidden sibling of ``target`` to write its next copy into, named after this process."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.{process_tag()}.", suffix=".tmp", dir=target.parent))


def sync_folder(folder: Path) -> None:
    """Flush every file in ``folder`` and the folder itself, so a copy that is complete on
    screen is complete on disk too (the swap is only as safe as what it swaps in)."""
    for path in folder.iterdir():
        if path.is_file():
            _fsync(path)
    _fsync(folder)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_folder(new: Path, target: Path) -> None:
    """Put the complete folder ``new`` (from ``new_folder``) in place of ``target``, which may
    not exist. The old copy is deleted afterwards; a crash at any point leaves ``target`` or a
    complete leftover that ``recover`` brings back."""
    sync_folder(new)
    if not target.exists():
        os.rename(new, target)
    elif exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # the old copy, now under the temporary name
    else:
        aside = new.with_name(new.name[: -len(".tmp")] + ".old")
        os.rename(target, aside)
        os.rename(new, target)
        shutil.rmtree(aside, ignore_errors=True)
    _fsync(target.parent)


class Leftover(NamedTuple):
    path: Path
    target: str  # the name of the folder it is a copy of
    tag: str | None  # the process that made it; None for an older release's names


_TAGGED = re.compile(r"^\.(?P<target>.+)\.(?P<tag>\d+\.\d+)\.[A-Za-z0-9_]+\.(?:tmp|old)$")
# names of older releases: .<target>.<random>.tmp, .<target>.old, .<target>.resume.tmp
_UNTAGGED = (
    re.compile(r"^(?P<target>\..+\.resume)\.tmp$"),
    re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]+\.tmp$"),
    re.compile(r"^\.(?P<target>.+)\.old$"),
)


def leftover(path: Path) -> Leftover | None:
    """What a hidden ``.tmp``/``.old`` folder is a copy of, or None for any other entry."""
    found = _TAGGED.match(path.name)
    if found:
        return Leftover(path, found["target"], found["tag"])
    for pattern in _UNTAGGED:
        found = pattern.match(path.name)
        if found:
            return Leftover(path, found["target"], None)
    return None


def recover(
    folder: Path, is_complete: Callable[[str, Path], bool], newest: Callable[[Path], float]
) -> tuple[list[str], list[str]]:
    """Tidy the leftovers of interrupted swaps in ``folder``: a live process's are spared; when a
    target is missing and no live process is swapping it, its newest complete leftover (by
    ``newest``) takes its name; every other leftover of an ended process is deleted.
    ``is_complete(target, copy)`` says whether a copy of ``target`` is whole.
    Returns (removed, restored) entry names."""
    groups: dict[str, list[Leftover]] = {}
    for entry in folder.iterdir():
        found = leftover(entry) if entry.is_dir() else None
        if found:
            groups.setdefault(found.target, []).append(found)
    removed: list[str] = []
    restored: list[str] = []
    for target, copies in sorted(groups.items()):
        ended = [c for c in copies if c.tag is None or not alive(c.tag)]
        if not (folder / target).exists():
            if len(ended) < len(copies):
                continue  # a live process is between the two renames of its swap
            complete = [c for c in ended if is_complete(target, c.path)]
            if complete:
                best = max(complete, key=lambda c: newest(c.path))
                os.rename(best.path, folder / target)
                restored.append(best.path.name)
                ended.remove(best)
        for copy in ended:
            shutil.rmtree(copy.path, ignore_errors=True)
            removed.append(copy.path.name)
    return removed, restored
