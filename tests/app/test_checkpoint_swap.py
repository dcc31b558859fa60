"""Overwriting a checkpoint cannot lose it: a real save killed between any two of its steps,
then the start-up clean-up, leaves the old or the new checkpoint complete under its name; a
live process's half-written copy survives the clean-up; a refused exchange falls back safely.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import mmdemo.folders as folders
from mmdemo.app.registry import CheckpointRegistry, owner_id
from mmdemo.folders import exchange, process_tag
from mmdemo.model.checkpoint import is_complete, load_checkpoint, read_card, save_checkpoint
from mmdemo.model.classifier import build_model
from mmdemo.training.finetune import resume_dir

from ..conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]
OWNER = owner_id("o" * 43)

# The child saves version 2 over version 1 with the real save; the patches only stop it at the
# step named on its command line (telling the test on stdout), where the test kills it.
CHILD = r"""
import os, shutil, sys, time
from pathlib import Path
import torch
import mmdemo.model.checkpoint as checkpoint
import mmdemo.folders as folders
from mmdemo.model.classifier import build_model
from tests.conftest import tiny_config

path, stop_at, refuse = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "refuse"

def pause(step):
    if step == stop_at:
        os.write(1, (step + "\n").encode())
        time.sleep(600)

real_save_file, real_exchange, real_rename, real_rmtree = (
    checkpoint.save_file, folders.exchange, os.rename, shutil.rmtree)

def save_file(state, filename, metadata=None):
    real_save_file(state, filename, metadata=metadata)
    if stop_at == "weights half written":
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 2)
    pause("weights half written")

def exchange(a, b):
    pause("before the swap")
    if refuse:
        return False
    done = real_exchange(a, b)
    pause("exchanged")
    return done

renames = []
def rename(a, b):
    real_rename(a, b)
    renames.append(b)
    pause("old set aside" if len(renames) == 1 else "new renamed in")

def rmtree(folder, ignore_errors=False):
    (Path(folder) / "config.json").unlink()
    pause("old half deleted")
    real_rmtree(folder, ignore_errors=ignore_errors)

checkpoint.save_file, folders.exchange, os.rename = save_file, exchange, rename
folders.shutil = type("Shutil", (), {"rmtree": staticmethod(rmtree)})
torch.manual_seed(2)
checkpoint.save_checkpoint(build_model(tiny_config()), path, training={"version": 2}, overwrite=True)
os.write(1, b"saved\n")
"""


def _save_v1(path: Path) -> None:
    torch.manual_seed(1)
    save_checkpoint(build_model(tiny_config()), path, training={"version": 1})


def _kill_save_at(path: Path, step: str, refuse: bool) -> None:
    """Run the child's overwrite save until ``step``, then SIGKILL it."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), step, "refuse" if refuse else "exchange"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        ready, _, _ = select.select([child.stdout], [], [], 120)
        line = child.stdout.readline().decode().strip() if ready else ""
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    errors = child.stderr.read().decode()[-2000:]
    child.stdout.close()
    child.stderr.close()
    assert line == step, f"the save did not stop at {step!r} (it said {line!r}): {errors}"


@pytest.mark.parametrize(
    ("refuse", "step", "before", "after"),
    [
        # with renameat2(RENAME_EXCHANGE): the name always holds a complete copy
        (False, "weights half written", 1, 1),
        (False, "before the swap", 1, 1),
        (False, "exchanged", 2, 2),
        (False, "old half deleted", 2, 2),
        # exchange refused: two renames, the name missing between them
        (True, "before the swap", 1, 1),
        (True, "old set aside", None, 2),
        (True, "new renamed in", 2, 2),
        (True, "old half deleted", 2, 2),
    ],
)
def test_a_save_killed_at_any_step_leaves_a_complete_checkpoint_after_clean_up(tmp_path, refuse, step, before, after):
    if not refuse and not _exchange_works(tmp_path):
        pytest.skip("this file system refuses RENAME_EXCHANGE")
    writable = tmp_path / "mine"
    path = writable / OWNER / "pets"
    _save_v1(path)
    _kill_save_at(path, step, refuse)
    assert (read_card(path)["version"] if path.exists() else None) == before
    registry = CheckpointRegistry(writable, tmp_path / "shipped")
    removed = registry.clean()
    assert read_card(path)["version"] == after
    assert is_complete(path)
    load_checkpoint(path)  # strict load: the weights match the config
    assert registry.names(OWNER) == ["pets"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["pets"]  # every leftover of the dead save went
    assert all(name.startswith(f"{OWNER}/.pets.") for name in removed)


def _exchange_works(tmp_path: Path) -> bool:
    """Whether this file system swaps folders with RENAME_EXCHANGE (else the fallback runs)."""
    probe = tmp_path / "probe"
    (probe / "a").mkdir(parents=True)
    (probe / "b").mkdir()
    try:
        return exchange(probe / "a", probe / "b")
    finally:
        shutil.rmtree(probe)


def test_exchange_swaps_two_folders_in_one_step(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from-a").touch()
    (b / "from-b").touch()
    if not exchange(a, b):
        pytest.skip("this file system refuses RENAME_EXCHANGE")
    assert [p.name for p in a.iterdir()] == ["from-b"]
    assert [p.name for p in b.iterdir()] == ["from-a"]
    with pytest.raises(FileNotFoundError):
        exchange(a, tmp_path / "missing")  # not a refusal: the caller hears of it


def _refuse_exchange(code: int):
    def renameat2(*args) -> int:
        ctypes.set_errno(code)
        return -1

    return renameat2


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP])
def test_a_refused_exchange_falls_back_and_replaces_the_checkpoint(tmp_path, monkeypatch, code):
    path = tmp_path / "pets"
    _save_v1(path)
    monkeypatch.setattr(folders, "_renameat2", _refuse_exchange(code))
    assert not exchange(tmp_path / "a", tmp_path / "b")
    save_checkpoint(build_model(tiny_config()), path, training={"version": 2}, overwrite=True)
    assert read_card(path)["version"] == 2 and is_complete(path)
    assert [p.name for p in tmp_path.iterdir()] == ["pets"]


def test_without_renameat2_the_save_falls_back(tmp_path, monkeypatch):
    path = tmp_path / "pets"
    _save_v1(path)
    monkeypatch.setattr(folders, "_renameat2", None)
    save_checkpoint(build_model(tiny_config()), path, training={"version": 2}, overwrite=True)
    assert read_card(path)["version"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["pets"]


def test_an_exchange_that_fails_otherwise_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "pets"
    _save_v1(path)
    monkeypatch.setattr(folders, "_renameat2", _refuse_exchange(errno.EIO))
    with pytest.raises(OSError, match="Input/output error"):
        save_checkpoint(build_model(tiny_config()), path, training={"version": 2}, overwrite=True)
    assert read_card(path)["version"] == 1 and is_complete(path)
    assert [p.name for p in tmp_path.iterdir()] == ["pets"]  # the new copy was deleted


def _ended_process_tag() -> str:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    tag = process_tag(ended.pid)
    ended.wait()
    return tag


def test_a_live_process_copy_survives_clean_up_and_an_ended_one_is_brought_back(tmp_path):
    writable = tmp_path / "mine"
    owner = writable / OWNER
    _save_v1(tmp_path / "made")
    # this test's own process is live: its copy of "pets" is a save in progress, the name missing
    # as between the fallback's two renames
    owner.mkdir(parents=True)
    live = owner / f".pets.{process_tag()}.abc_12.old"
    (tmp_path / "made").rename(live)
    registry = CheckpointRegistry(writable, tmp_path / "shipped")
    assert registry.clean() == []
    assert sorted(p.name for p in owner.iterdir()) == [live.name]
    # the same copy left by a process that has ended: the checkpoint comes back
    ended = owner / f".pets.{_ended_process_tag()}.abc_12.old"
    live.rename(ended)
    assert registry.clean() == []
    assert sorted(p.name for p in owner.iterdir()) == ["pets"]
    assert read_card(owner / "pets")["version"] == 1


def test_clean_up_keeps_the_newest_complete_copy_and_deletes_incomplete_ones(tmp_path):
    writable = tmp_path / "mine"
    owner = writable / OWNER
    tag = _ended_process_tag()
    for version, name in ((1, f".pets.{tag}.older.old"), (2, f".pets.{tag}.newer.tmp")):
        torch.manual_seed(version)
        save_checkpoint(build_model(tiny_config()), owner / name, training={"version": version})
    os.utime(owner / f".pets.{tag}.older.old" / "model.safetensors", (1e9, 1e9))
    half = owner / f".pets.{tag}.half.tmp"
    save_checkpoint(build_model(tiny_config()), half, training={"version": 3})
    weights = half / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # the newest, but cut short
    # an older release's leftovers of another checkpoint, which is there
    _save_v1(owner / "dogs")
    (owner / ".dogs.old").mkdir()
    (owner / ".dogs.k2j4_x.tmp").mkdir()
    registry = CheckpointRegistry(writable, tmp_path / "shipped")
    removed = sorted(registry.clean())
    assert read_card(owner / "pets")["version"] == 2
    assert sorted(p.name for p in owner.iterdir()) == ["dogs", "pets"]
    assert removed == sorted(
        f"{OWNER}/{n}" for n in (f".pets.{tag}.older.old", f".pets.{tag}.half.tmp", ".dogs.old", ".dogs.k2j4_x.tmp")
    )


def test_clean_up_keeps_a_resume_state_and_brings_back_an_interrupted_one(tmp_path):
    writable = tmp_path / "mine"
    owner = writable / OWNER
    _save_v1(owner / "pets")
    state = resume_dir(owner / "pets")
    state.mkdir()
    (state / "state.json").write_text("{}")
    (state / "state.safetensors").write_bytes(b"")
    registry = CheckpointRegistry(writable, tmp_path / "shipped")
    assert registry.clean() == []
    assert sorted(p.name for p in owner.iterdir()) == [".pets.resume", "pets"]
    # a save of the resume state killed between the fallback's renames: only the copies remain
    tag = _ended_process_tag()
    state.rename(owner / f".{state.name}.{tag}.x1.old")
    (owner / f".{state.name}.{tag}.x2.tmp").mkdir()  # the new state, tensors only: not whole
    assert registry.clean() == [f"{OWNER}/.{state.name}.{tag}.x2.tmp"]
    assert (state / "state.json").is_file()
    assert sorted(p.name for p in owner.iterdir()) == [".pets.resume", "pets"]


def test_readers_never_see_a_missing_or_half_checkpoint_during_overwrites(tmp_path):
    if not _exchange_works(tmp_path):
        pytest.skip("this file system refuses RENAME_EXCHANGE")
    path = tmp_path / "mine" / OWNER / "pets"
    _save_v1(path)
    registry = CheckpointRegistry(tmp_path / "mine", tmp_path / "shipped")
    seen: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            names = registry.names(OWNER)
            if names != ["pets"]:
                seen.append(f"listing {names}")
            elif not is_complete(path):
                seen.append("incomplete")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for version in range(2, 12):
            save_checkpoint(build_model(tiny_config()), path, training={"version": version}, overwrite=True)
    finally:
        done.set()
        reader.join()
    assert seen == []
    assert read_card(path)["version"] == 11
