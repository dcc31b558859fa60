"""A fine-tune job's one clock: its phases summed over every segment (never negative, never
restarted by a resume), the time left from the measured rate, and the epochs a stop and a Resume
name agreeing with the epoch records."""

import json
import time

from mmdemo.app import clock
from mmdemo.app.jobs import JobManager, _public
from mmdemo.app.registry import CheckpointRegistry, owner_id
from mmdemo.app.worker import ending_words, saved_epoch, write_record
from mmdemo.training.finetune import resume_dir
from mmdemo.ui.finetune import status_text

OWNER = owner_id("z" * 43)
T0 = 1_800_000_000.0


def _record(**fields) -> dict:
    record = {
        "id": "job", "owner": OWNER, "message": "", "created": T0, "started": 0.0, "finished": 0.0,
        "progress": 0.0, "epoch": 0, "epochs": 4, "history": [], "report": {}, "checkpoint": "m",
        "time_limit_s": 600.0, "state": "queued",
    }  # fmt: skip
    record.update(fields)
    return record


def test_a_jobs_status_sums_its_phases_and_is_never_negative():
    record = _record()
    clock.enter(record, "queued", T0)
    assert _public(record, ["job"], False)["elapsed_s"] >= 0
    clock.enter(record, "preparing", T0 + 5)
    # a worker that starts 20 s after its launch does not restart the clock (it used to)
    assert clock.times(record, T0 + 25) == {"waiting": 5.0, "preparing": 20.0, "running": 0.0, "elapsed": 25.0}
    clock.enter(record, "running", T0 + 30)
    assert clock.times(record, T0 + 40)["elapsed"] == 40.0
    # a wall clock stepped back (or a record read a moment before the writer's now) adds nothing
    assert clock.times(record, T0 + 20) == {"waiting": 5.0, "preparing": 25.0, "running": 0.0, "elapsed": 30.0}
    clock.enter(record, "stopped", T0 + 60)
    record["finished"] = T0 + 60
    status = _public(record, [], False)  # read long after: a finished job's clock stands still
    assert (status["waiting_s"], status["preparing_s"], status["running_s"]) == (5.0, 25.0, 30.0)
    assert status["elapsed_s"] == 60.0 and status["left_s"] is None
    assert "1 min 00 s elapsed: 5 s waiting, 25 s preparing, 30 s training" in status_text(status)


def test_a_resumed_jobs_elapsed_time_includes_its_first_segment():
    record = _record()
    clock.enter(record, "queued", T0)
    clock.enter(record, "preparing", T0 + 2)
    clock.enter(record, "running", T0 + 22)
    clock.enter(record, "stopped", T0 + 76)  # 76 s from Start to the stop
    clock.enter(record, "queued", T0 + 500)  # Resume, much later: the pause counts nowhere
    assert clock.times(record, T0 + 501)["elapsed"] == 77.0
    clock.enter(record, "preparing", T0 + 503)
    clock.enter(record, "running", T0 + 513)
    clock.enter(record, "done", T0 + 540)
    assert clock.times(record, T0 + 9999) == {"waiting": 5.0, "preparing": 30.0, "running": 81.0, "elapsed": 116.0}


def test_the_time_left_comes_from_the_measured_rate_and_is_never_negative():
    record = _record(state="running", progress=0.5, phase="running", phase_since=T0)
    assert clock.time_left(record, T0 + 10) is None  # no rate yet: the plan's estimate stands
    clock.start_rate(record, T0)  # a resumed run's first step, half-way through
    record["progress"] = 0.51
    assert clock.time_left(record, T0 + 10) is None  # too little trained to trust a rate
    record["progress"] = 0.6
    assert clock.time_left(record, T0 + 20) == 80.0  # 0.1 in 20 s: 0.4 in 80 s
    record.update(budget_since=T0 - 5, time_limit_s=60.0)
    assert clock.time_left(record, T0 + 20) == 35.0  # the time budget ends it sooner
    assert clock.time_left(record, T0 + 100) == 0.0  # past its budget: 0, not negative
    now = time.time()  # what the status shows now, of a run 100 s into a 60 s budget
    record.pop("phase")
    clock.enter(record, "running", now - 100)
    record.update(rate_since=now - 100, budget_since=now - 100)
    status = {**_public(record, [], False), "estimate_s": 13.0}
    assert status["left_s"] == 0.0 and status["elapsed_s"] >= 100
    assert "about 0 s left" in status_text(status) and "estimated" not in status_text(status)
    record.update(rate_since=0.0)
    status = {**_public(record, [], False), "estimate_s": 13.0}
    assert "left" not in status_text(status) and "estimated 13 s" in status_text(status)
    status["startup_s"] = 20.0  # the worker's start-up, measured: no plan estimates it
    assert "estimated 33 s on this machine, 20 s of it starting the worker" in status_text(status)


def test_a_stop_during_epoch_2_names_the_epochs_of_the_records(tmp_path):
    history = [{"epoch": 1, "complete": True, "train_loss": 0.6}, {"epoch": 2, "complete": False, "train_loss": 0.5}]
    target = tmp_path / "mine" / OWNER / "m"
    resume_dir(target).mkdir(parents=True)  # the resume state's JSON half: saved after epoch 1, the last complete
    (resume_dir(target) / "state.json").write_text(json.dumps({"epoch": 1, "history": history[:1]}))
    assert saved_epoch(target) == 1
    words = ending_words(history, 2, "stop", 1, saved_epoch(target), "m", 0.75)
    assert words == "stopped during epoch 2; saved checkpoint 'm' (best epoch 1, validation accuracy 0.750)" + (
        "; Resume continues after epoch 1"
    )
    assert "best epoch 2, cut short" in ending_words(history, 2, "stop", 2, 1, "m", 0.8)
    assert ending_words(history[:1], 1, "time limit", 1, 1, "m", 0.8).startswith(
        "stopped after epoch 1 by the time limit; "
    )
    assert (
        ending_words(history[:1], 1, None, 1, 0, "m", 0.8)
        == "saved checkpoint 'm' (best epoch 1, validation accuracy 0.800)"
    )

    # the Resume line of the same job, from the real JobManager.resume
    upload = tmp_path / "up"
    upload.mkdir()
    registry = CheckpointRegistry(tmp_path / "mine", tmp_path / "shipped")
    jobs = JobManager(registry, tmp_path / "jobs")
    jobs.close()  # nothing is launched: only the records are read and written
    record = _record(history=history, epoch=2, target=str(target), data={"folder": str(upload)})
    clock.enter(record, "queued", T0)
    clock.enter(record, "running", T0 + 20)
    clock.enter(record, "stopped", T0 + 50)
    record["finished"] = T0 + 50
    write_record(jobs.dir / "job.json", record)
    status = jobs.resume(OWNER)
    assert status["state"] == "queued" and "to resume after epoch 1" in status["message"], status
    assert status["epoch"] == 1 and [h["epoch"] for h in status["history"]] == [1]
    assert status["elapsed_s"] >= 50.0  # the first segment stays counted
