"""Checkpoint names are validated; the registry lists checkpoints; a job trains in the background
(safe zip extraction: tests/datasets/test_archives.py)."""

import csv
import os
import signal
import time
import zipfile

import pytest
from PIL import Image

from mmdemo.app.jobs import DataSource, JobManager
from mmdemo.app.registry import CheckpointRegistry, owner_id, validate_name
from mmdemo.datasets.csv_table import read_csv
from mmdemo.model.checkpoint import save_checkpoint
from mmdemo.model.classifier import build_model

from ..conftest import tiny_config
from ..space import parent_pid


def test_checkpoint_names_are_validated():
    assert validate_name(" my-model_2.1 ") == "my-model_2.1"
    for bad in ("", "../x", "a/b", ".hidden", "x" * 65, "spaces here"):
        with pytest.raises(ValueError, match="not valid"):
            validate_name(bad)


OWNER = owner_id("x" * 43)
OTHER = owner_id("y" * 43)


def test_registry_lists_shipped_and_the_owners_checkpoints(tmp_path):
    shipped, writable = tmp_path / "shipped", tmp_path / "mine"
    save_checkpoint(build_model(tiny_config()), shipped / "default")
    save_checkpoint(build_model(tiny_config()), writable / OWNER / "tuned")
    (writable / OWNER / "not-a-checkpoint").mkdir()
    registry = CheckpointRegistry(writable, shipped)
    assert registry.names() == ["default"]  # no owner: the shipped ones only
    assert registry.names(OWNER) == ["default", "tuned"]
    assert registry.names(OTHER) == ["default"]  # another visitor does not see it
    assert registry.predictor("tuned", OWNER) is registry.predictor("tuned", OWNER)  # cached
    with pytest.raises(ValueError, match="unknown checkpoint 'tuned'"):
        registry.predictor("tuned", OTHER)
    with pytest.raises(ValueError, match="unknown checkpoint 'nope'"):
        registry.path("nope")
    archive = registry.zip("tuned", tmp_path, OWNER)
    assert sorted(zipfile.ZipFile(archive).namelist()) == [
        "tuned/",
        "tuned/README.md",
        "tuned/config.json",
        "tuned/model.safetensors",
    ]
    with pytest.raises(ValueError, match="unknown checkpoint"):
        registry.zip("tuned", tmp_path, OTHER)


def _dataset(folder):
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(12):
        Image.new("RGB", (16, 16), (255, 0, 0) if i % 2 else (0, 0, 255)).save(folder / "img" / f"{i}.png")
        rows.append([f"img/{i}.png", "what colour?", "red" if i % 2 else "blue"])
    with open(folder / "data.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "text", "label"], *rows])
    dataset = read_csv(folder / "data.csv", image_root=folder, confine=True)
    return dataset, DataSource(folder, folder / "data.csv")


def test_job_trains_in_a_worker_process_and_saves_a_usable_checkpoint(tmp_path):
    dataset, source = _dataset(tmp_path / "up")
    shipped = tmp_path / "shipped"
    save_checkpoint(build_model(tiny_config(labels=["blue", "red"])), shipped / "base")
    registry = CheckpointRegistry(tmp_path / "mine", shipped)
    jobs = JobManager(registry, tmp_path / "jobs")
    settings = dict(epochs=2, batch_size=4, freeze=[], lr=1e-2, encoder_lr=1e-2)  # two epochs are enough to learn it
    status = jobs.start(OWNER, dataset, source, settings, "tuned", base="base", val_fraction=0.25)
    assert status["state"] in ("queued", "preparing")
    with pytest.raises(ValueError, match="already have a fine-tune job"):
        jobs.start(OWNER, dataset, source, settings, "other", base="base")
    assert jobs.status(OTHER)["state"] == "idle"  # another visitor sees nothing of it
    jobs.stop(OTHER)
    status = jobs.wait(OWNER, 240)
    assert status["state"] == "done", status["message"]
    assert len(status["history"]) == 2 and status["progress"] == 1.0
    assert "tuned" in registry.names(OWNER) and "tuned" not in registry.names(OTHER)
    assert not (tmp_path / "up").exists()  # the upload folder went with the job
    Image.new("RGB", (16, 16), (255, 0, 0)).save(tmp_path / "red.png")
    assert registry.predictor("tuned", OWNER).predict(tmp_path / "red.png", "what colour?").label == "red"
    with pytest.raises(ValueError, match="already exists"):
        jobs.start(OWNER, dataset, source, settings, "tuned", base="base")
    with pytest.raises(ValueError, match="'base' is a shipped checkpoint and cannot be overwritten"):
        jobs.start(OWNER, dataset, source, settings, "base", base="base", overwrite=True)
    jobs.close()


def test_a_job_with_a_group_column_holds_out_whole_groups(tmp_path):
    """The worker reads the group column the upload named: the split keeps each group on one
    side, and the plan the visitor sees and the checkpoint's record say so."""
    import json

    folder = tmp_path / "up"
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(12):
        Image.new("RGB", (16, 16), (255, 0, 0) if i % 2 else (0, 0, 255)).save(folder / "img" / f"{i}.png")
        rows.append([f"img/{i}.png", "what colour?", "red" if i % 2 else "blue", f"shop{i // 2}"])
    with open(folder / "data.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "text", "label", "shop"], *rows])
    dataset = read_csv(folder / "data.csv", image_root=folder, confine=True, group_column="shop")
    source = DataSource(folder, folder / "data.csv", group_column="shop")
    registry, jobs = _manager(tmp_path)
    settings = dict(epochs=1, batch_size=4, freeze=[])
    jobs.start(OWNER, dataset, source, settings, "grouped", base="base", val_fraction=0.34)
    status = jobs.wait(OWNER, 240)
    assert status["state"] == "done", status["message"]
    assert "split: validation: whole groups of the group column held out (6 groups" in status["plan"]
    record = json.loads((registry.path("grouped", OWNER) / "config.json").read_text())["training"]
    assert record["split"]["method"] == "group column" and record["split"]["val_rows"] == 4
    jobs.close()


def _manager(tmp_path, **limits):
    shipped = tmp_path / "shipped"
    if not shipped.exists():
        save_checkpoint(build_model(tiny_config(labels=["blue", "red"])), shipped / "base")
    from mmdemo.app.settings import Limits

    registry = CheckpointRegistry(tmp_path / "mine", shipped, limits=Limits(**limits))
    return registry, JobManager(registry, tmp_path / "jobs")


def _wait_for(jobs, owner, states, timeout=120):
    deadline = time.monotonic() + timeout
    while jobs.status(owner)["state"] not in states and time.monotonic() < deadline:
        time.sleep(0.1)
    return jobs.status(owner)


def test_queue_is_fair_shows_positions_and_refuses_when_full(tmp_path):
    registry, jobs = _manager(tmp_path, max_queued_jobs=1)
    settings = dict(epochs=1, batch_size=4, freeze=[])
    owners = [owner_id(c * 43) for c in "cde"]
    data = [_dataset(tmp_path / f"up{i}") for i in range(3)]
    jobs.start(owners[0], *data[0], settings, "m", base="base")
    _wait_for(jobs, owners[0], ("preparing", "running", "done"))
    status = jobs.start(owners[1], *data[1], settings, "m", base="base")  # same name, other owner: fine
    assert status["state"] == "queued" and status["message"] == "queued: position 1 of 1"
    with pytest.raises(ValueError, match="queue full: 1 fine-tune jobs are waiting"):
        jobs.start(owners[2], *data[2], settings, "m", base="base")
    assert jobs.stop(owners[1])["state"] == "stopped"  # a queued job stops at once
    assert not (tmp_path / "up1").exists()
    jobs.stop(owners[0])
    jobs.wait(owners[0], 120)
    jobs.close()


def test_stop_while_preparing_and_a_killed_worker_do_not_harm_the_server(tmp_path):
    registry, jobs = _manager(tmp_path)
    settings = dict(epochs=50, batch_size=2, freeze=[])
    jobs.start(OWNER, *_dataset(tmp_path / "up"), settings, "stopped-early", base="base")
    assert _wait_for(jobs, OWNER, ("preparing",))["state"] == "preparing"
    jobs.stop(OWNER)
    status = jobs.wait(OWNER, 60)
    assert status["state"] == "stopped", status
    # a worker killed from outside (as the out-of-memory killer does): the job fails, the next one runs
    jobs.start(OTHER, *_dataset(tmp_path / "up2"), settings, "killed", base="base")
    assert _wait_for(jobs, OTHER, ("running",))["state"] == "running"
    record = next(r for r in jobs.records() if r["owner"] == OTHER)
    os.kill(record["pid"], signal.SIGKILL)
    status = jobs.wait(OTHER, 60)
    assert status["state"] == "failed" and "killed, possibly out of memory" in status["message"]
    jobs.start(OTHER, *_dataset(tmp_path / "up3"), dict(epochs=1, batch_size=4, freeze=[]), "next", base="base")
    assert jobs.wait(OTHER, 120)["state"] == "done"
    jobs.close()


def test_a_restart_shows_an_unfinished_job_as_interrupted_and_keeps_its_data(tmp_path):
    registry, jobs = _manager(tmp_path)
    settings = dict(epochs=50, batch_size=2, freeze=[])
    jobs.start(OWNER, *_dataset(tmp_path / "up"), settings, "long", base="base")
    _wait_for(jobs, OWNER, ("running",))
    jobs.close()  # the server goes away mid-job: its worker is told and ends at its next step
    restarted = JobManager(registry, tmp_path / "jobs")
    status = restarted.status(OWNER)
    assert status["state"] == "interrupted" and "server stopped while this job was running" in status["message"]
    assert (tmp_path / "up" / "data.csv").is_file() and restarted.kept_data() == {tmp_path / "up"}
    record = restarted.records()[0]  # what a resume needs
    assert record["owner"] == OWNER and record["settings"]["epochs"] == 50 and record["target"].endswith("long")
    assert restarted.status(OTHER)["state"] == "idle"
    restarted.close()


def test_an_interrupted_job_resumes_from_its_last_saved_epoch_after_a_restart(tmp_path):
    from mmdemo.app.worker import saved_history
    from mmdemo.training.finetune import resume_dir

    registry, jobs = _manager(tmp_path)
    overrides = dict(epochs=20, batch_size=4, freeze=[], patience=100)  # no early stop: all 20 epochs
    status = jobs.start(OWNER, *_dataset(tmp_path / "up"), overrides, "long", base="base")
    assert "estimated time on this machine" in status["plan"] and status["estimate_s"] > 0
    state = resume_dir(registry.writable_dir / OWNER / "long") / "state.json"
    deadline = time.monotonic() + 120
    while not state.is_file() and time.monotonic() < deadline:
        time.sleep(0.02)
    jobs.close()  # the server goes away after the first saved epoch (its worker ends at its next step)
    saved = len(saved_history(registry.writable_dir / OWNER / "long"))
    assert 1 <= saved < 20

    restarted = JobManager(registry, tmp_path / "jobs")
    status = restarted.status(OWNER)
    assert status["state"] == "interrupted" and status["resumable"], status
    assert f"Resume continues after epoch {saved}" in status["message"]
    first = status["elapsed_s"]  # the first segment, on the job's one clock
    assert first > 0 and first == pytest.approx(
        status["waiting_s"] + status["preparing_s"] + status["running_s"], abs=0.2
    )
    assert restarted.kept_data() == {tmp_path / "up"}
    assert not restarted.status(OTHER)["resumable"]
    with pytest.raises(ValueError, match="you have no fine-tune job"):
        restarted.resume(OTHER)  # only the owner can resume it
    with pytest.raises(ValueError, match="no fine-tune job 'nope' of yours"):
        restarted.resume(OWNER, "nope")
    status = restarted.resume(OWNER, "long", time_limit_s=300)
    assert status["state"] == "queued" and f"resume after epoch {saved}" in status["message"]
    seen = [status["elapsed_s"]]
    deadline = time.monotonic() + 300
    while restarted.running(OWNER) and time.monotonic() < deadline:
        seen.append(restarted.status(OWNER)["elapsed_s"])
        time.sleep(0.2)
    status = restarted.wait(OWNER, 10)
    assert status["state"] == "done", status["message"]
    # it counts on from the first segment: never back (a read may precede a write stamped a moment
    # earlier), never negative, the worker's start-up included
    seen.append(status["elapsed_s"])
    assert seen[0] >= first and all(b >= a - 0.5 for a, b in zip(seen, seen[1:])) and seen[-1] > first, seen
    assert [h["epoch"] for h in status["history"]] == list(range(1, 21))  # continued, not restarted
    assert not status["resumable"] and not state.exists() and not (tmp_path / "up").exists()
    assert "long" in registry.names(OWNER)
    with pytest.raises(ValueError, match="cannot be resumed"):
        restarted.resume(OWNER)
    restarted.close()


def test_a_stopped_job_can_resume_and_a_new_job_drops_the_old_ones_data(tmp_path):
    from mmdemo.app.worker import saved_epoch
    from mmdemo.training.finetune import resume_dir

    registry, jobs = _manager(tmp_path)
    overrides = dict(epochs=50, batch_size=2, freeze=[], patience=100)
    jobs.start(OWNER, *_dataset(tmp_path / "up"), overrides, "first", base="base")
    state = resume_dir(registry.writable_dir / OWNER / "first") / "state.json"
    deadline = time.monotonic() + 120
    while not state.is_file() and time.monotonic() < deadline:
        time.sleep(0.02)
    jobs.stop(OWNER)
    status = jobs.wait(OWNER, 60)
    assert status["state"] == "stopped" and status["resumable"], status
    assert (tmp_path / "up").is_dir()  # kept for the resume
    # the epochs the message names are the records': the one cut short, and the last complete one
    saved = saved_epoch(registry.writable_dir / OWNER / "first")
    assert saved >= 1 and f"Resume continues after epoch {saved}" in status["message"], status["message"]
    cut = [h["epoch"] for h in status["history"] if h.get("complete") is False]
    stopped_in = f"stopped during epoch {saved + 1}" if cut else f"stopped after epoch {saved}"
    assert cut in ([], [saved + 1]) and status["message"].startswith(stopped_in), status["message"]
    with pytest.raises(ValueError, match="the time budget must be 1-120 minutes"):
        jobs.time_limit_s(500)
    jobs.start(OWNER, *_dataset(tmp_path / "up2"), dict(epochs=1, batch_size=4, freeze=[]), "second", base="base")
    assert not (tmp_path / "up").exists() and not state.exists()  # only the latest job can resume
    assert jobs.wait(OWNER, 120)["state"] == "done"
    jobs.close()


def _held_worker(jobs, owner, timeout=60) -> int:
    """The pid of ``owner``'s worker, held (SIGSTOP) as soon as the server names it: it stays at
    its first step until the test sends SIGCONT."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = next((r for r in jobs.records() if r["owner"] == owner and r.get("worker")), None)
        if record:
            os.kill(record["pid"], signal.SIGSTOP)
            return record["pid"]
        time.sleep(0.01)
    raise AssertionError(f"no worker started for {owner}")


def test_a_new_server_waits_for_the_old_ones_worker_and_adopts_its_queue(tmp_path):
    registry, jobs = _manager(tmp_path)
    overrides = dict(epochs=1, batch_size=4, freeze=[])
    jobs.start(OWNER, *_dataset(tmp_path / "up"), overrides, "first", base="base")
    pid = _held_worker(jobs, OWNER)
    assert parent_pid(pid) == os.getpid()  # a child of the server, a program of its own
    assert "mmdemo.app.worker" in open(f"/proc/{pid}/cmdline").read()
    jobs.start(OTHER, *_dataset(tmp_path / "up2"), overrides, "second", base="base")
    try:
        jobs.close(wait_s=0)  # the server goes; its worker (held) cannot end yet
        restarted = JobManager(registry, tmp_path / "jobs")
        time.sleep(2)  # four scheduler ticks
        # the live worker's job is not marked interrupted, nothing runs beside it, nothing is deleted
        assert restarted.status(OWNER)["state"] == "preparing"
        assert restarted.status(OTHER)["message"] == "queued: position 1 of 1"
        assert restarted._process is None and (tmp_path / "up").is_dir() and (tmp_path / "up2").is_dir()
        assert restarted.kept_data() == {tmp_path / "up", tmp_path / "up2"}
        assert restarted.stop(OWNER)["message"] == "stopping ..."  # a Stop in that window waits for it
        assert (tmp_path / "up" / "data.csv").is_file()
    finally:
        os.kill(pid, signal.SIGCONT)
    status = _wait_for(restarted, OWNER, ("stopped", "interrupted", "done", "failed"), 60)
    assert status["state"] == "stopped", status
    assert restarted.wait(OTHER, 180)["state"] == "done"  # the adopted queue runs on the new server
    assert not (tmp_path / "up").exists() and not (tmp_path / "up2").exists()
    restarted.close()


def test_the_worker_hears_a_stop_line_and_the_end_of_its_input_apart():
    from mmdemo.app.worker import STOP_LINE, ServerLink

    read, write = os.pipe()
    link = ServerLink(read).listen()
    os.write(write, STOP_LINE[:2])  # a line may arrive in pieces
    os.write(write, STOP_LINE[2:])
    assert link.stop.wait(5) and link.is_set()
    os.close(write)  # the server closes the pipe after a stop: still a stop, not a lost server
    link.reader.join(5)
    assert not link.reader.is_alive() and not link.gone.is_set()
    os.close(read)

    read, write = os.pipe()
    link = ServerLink(read).listen()
    assert not link.is_set()
    os.close(write)  # the server went away without a word
    link.reader.join(5)
    assert link.gone.is_set() and not link.stop.is_set() and link.is_set()
    os.close(read)
