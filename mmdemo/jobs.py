"""Fine-tune jobs for the app: a fair queue, one job running at a time, each in its own
worker process (mmdemo/worker.py), each with a record on disk.

States: ``queued`` (position shown), ``preparing`` (reading and encoding the data), ``running``
(training), then ``done``, ``failed``, ``stopped``, or ``interrupted`` (the server stopped while
the job was unfinished).

Settings come from the adaptive recipe (``finetune.plan``): a job holds only the values the
visitor set (``overrides``) and a time budget, and its record keeps the plan (what was chosen,
why, the estimated time on this machine) so the status can show it before training starts.

Resume: a finished job whose run saved a resume state (``finetune.resume_dir``: after each
complete epoch; kept when a run is stopped, interrupted, killed or cut by its time limit) keeps
its data folder, and ``resume()`` queues it again to continue from its last saved epoch with a
new time budget. Only a visitor's latest job keeps its data: starting a new one drops the
older ones' data and resume state, and everything expires after the anonymous time to live.

The record (``<data>/jobs/<id>.json``) holds what a run needs: the owner, the data folder and
CSV columns, the overrides and time budget, the base and target checkpoints. Every visitor sees
and controls only their own jobs (``owner``); the queue admits at most ``max_jobs_per_visitor``
unfinished jobs per visitor and ``max_queued_jobs`` in all.
"""

from __future__ import annotations

import logging
import multiprocessing
import secrets
import shutil
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

from .data import Dataset, check_trainable
from .finetune import FinetuneRequest, plan, resume_dir
from .limits import Limits, data_dir
from .recipe import DEFAULT_BUDGET_S
from .registry import CheckpointRegistry
from .worker import read_record, run_job, saved_history, write_record

log = logging.getLogger("mmdemo.jobs")

UNFINISHED = ("queued", "preparing", "running")
FINISHED = ("done", "failed", "stopped", "interrupted")
STOP_GRACE_S = {"queued": 0.0, "preparing": 10.0, "running": 30.0}  # then the worker is terminated
IDLE = {"state": "idle", "message": "No fine-tune job has run yet."}


class DataSource(NamedTuple):
    """Where a job's data is: the upload folder (deleted when the job ends), the CSV in it and
    its columns."""

    folder: Path
    csv: Path
    image_column: str = "image"
    text_column: str = "text"
    label_column: str = "label"
    name: str = "data.csv"  # the name the user uploaded it under (for the model card)


class JobManager:
    """A queue of fine-tune jobs run one at a time in worker processes."""

    def __init__(self, registry: CheckpointRegistry, jobs_dir: str | Path | None = None, limits: Limits | None = None):
        self.registry = registry
        self.limits = limits or registry.limits
        self.dir = Path(jobs_dir) if jobs_dir else data_dir() / "jobs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._process = None  # the running worker
        self._running_id: str | None = None
        self._running_owner: str | None = None
        self._stop = None  # its stop Event
        self._stop_requested_at: float | None = None
        self._closed = False
        self._mark_interrupted()
        self._scheduler = threading.Thread(target=self._schedule, name="mmdemo-jobs", daemon=True)
        self._scheduler.start()

    # --- records -------------------------------------------------------------------------
    def _path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.json"

    def records(self) -> list[dict]:
        out = []
        for path in self.dir.glob("*.json"):
            try:
                out.append(read_record(path))
            except (OSError, ValueError):
                continue
        return sorted(out, key=lambda r: r["created"])

    def _mark_interrupted(self) -> None:
        """At start-up: jobs that were unfinished when the server stopped are interrupted;
        records (and an interrupted job's data) older than the anonymous time to live go."""
        ttl_h = self.limits.anonymous_ttl_hours
        for record in self.records():
            if record["state"] in UNFINISHED:
                was = record["state"]
                record.update(
                    state="interrupted",
                    finished=time.time(),
                    message=f"the server restarted while this job was {was}; its data is kept for {ttl_h} h",
                )
                write_record(self._path(record["id"]), record)
            elif record["state"] in FINISHED and time.time() - record["finished"] > ttl_h * 3600:
                _drop_resume(record)  # a resumable job's data and state
                self._path(record["id"]).unlink(missing_ok=True)

    def kept_data(self) -> set[Path]:
        """Upload folders of jobs that can still be resumed (not swept at start-up)."""
        return {Path(r["data"]["folder"]) for r in self.records() if r["state"] == "interrupted" or resumable(r)}

    # --- what a visitor sees -------------------------------------------------------------
    def status(self, owner: str) -> dict:
        """The visitor's latest job, with its queue position while queued."""
        with self._lock:
            self._reap_if_ended()
            records = self.records()
            mine = [r for r in records if r["owner"] == owner]
            if not mine:
                return dict(
                    IDLE, progress=0.0, epoch=0, epochs=0, history=[], report={}, checkpoint="", elapsed_s=0.0,
                    plan="", estimate_s=0.0, time_limit_s=0.0, resumable=False,
                )  # fmt: skip
            record = mine[-1]
            queued = [r["id"] for r in records if r["state"] == "queued"]
            stopping = record["id"] == self._running_id and self._stop_requested_at is not None
        return _public(record, queued, stopping, resumable(record))

    def running(self, owner: str | None = None) -> bool:
        """Whether a job (of ``owner``) is unfinished, or finished but not yet cleaned up."""
        if self._running_owner is not None and owner in (None, self._running_owner):
            return True
        return any(r["state"] in UNFINISHED and (owner is None or r["owner"] == owner) for r in self.records())

    # --- actions -------------------------------------------------------------------------
    def time_limit_s(self, minutes: float | None) -> float:
        """A job's time budget in seconds: ``minutes`` (None: the recipe's default), within the
        server's job time limit; ValueError names the bound."""
        limit_min = self.limits.job_time_limit_min
        if minutes is None:
            return min(DEFAULT_BUDGET_S, limit_min * 60)
        if not 1 <= float(minutes) <= limit_min:
            raise ValueError(
                f"the time budget must be 1-{limit_min} minutes (MMDEMO_JOB_TIME_LIMIT_MIN), got {minutes:g}"
            )
        return float(minutes) * 60

    def plan(
        self,
        dataset: Dataset,
        overrides: dict | None = None,
        time_limit_s: float | None = None,
        init: Path | None = None,
    ):
        """The recipe a job on ``dataset`` would train with (``finetune.plan``): every setting, why
        it was chosen, and the estimated time on this machine; ValueError for a bad override."""
        request = FinetuneRequest(
            dataset, Path("plan"), init=init, overrides=dict(overrides or {}), time_limit_s=time_limit_s
        )
        recipe = plan(request)
        if not 1 <= recipe.settings.epochs <= self.limits.max_epochs:
            raise ValueError(
                f"epochs must be 1-{self.limits.max_epochs} (MMDEMO_MAX_EPOCHS), got {recipe.settings.epochs}"
            )
        return recipe

    def start(
        self,
        owner: str,
        dataset: Dataset,
        source: DataSource,
        overrides: dict | None,
        name: str,
        base: str | None = None,
        overwrite: bool = False,
        val_fraction: float = 0.1,
        time_limit_s: float | None = None,
    ) -> dict:
        """Queue a job trained by the recipe, with ``overrides`` (settings the visitor set) winning
        over its choices, within ``time_limit_s`` (default: the recipe's budget, capped by the
        server's job time limit); ValueError (nothing queued) names what is wrong."""
        check_trainable(dataset)
        target = self.registry.target(name, owner, overwrite)
        init = self.registry.path(base, owner) if base else None
        time_limit_s = min(time_limit_s or self.time_limit_s(None), self.limits.job_time_limit_min * 60)
        recipe = self.plan(dataset, overrides, time_limit_s, init)
        with self._lock:
            records = self.records()
            mine = [r for r in records if r["owner"] == owner and r["state"] in UNFINISHED]
            self._check_room(owner, records)
            if any(r["target"] == str(target) and r["state"] in UNFINISHED for r in records):
                raise ValueError(f"a job is already training {name!r}")
            for older in (r for r in records if r["owner"] == owner and r not in mine):
                _drop_resume(older)  # only the latest job can be resumed
            job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
            record = {
                "id": job_id,
                "owner": owner,
                "state": "queued",
                "message": "waiting for its turn",
                "created": time.time(),
                "started": 0.0,
                "finished": 0.0,
                "progress": 0.0,
                "epoch": 0,
                "epochs": recipe.settings.epochs,
                "history": [],
                "report": {},
                "checkpoint": target.name,
                "target": str(target),
                "base": str(init) if init else None,
                "base_name": base,
                "overwrite": bool(overwrite),
                "val_fraction": float(val_fraction),
                "overrides": dict(overrides or {}),
                "settings": asdict(recipe.settings),  # as planned; the worker plans again at its start
                "plan": recipe.describe(),
                "estimate_s": round(recipe.estimate_s, 1),
                "time_limit_s": time_limit_s,
                "data": {k: str(v) for k, v in source._asdict().items()},
            }
            write_record(self._path(job_id), record)
        self._wake.set()
        return self.status(owner)

    def resume(self, owner: str, job: str | None = None, time_limit_s: float | None = None) -> dict:
        """Queue the visitor's stopped, interrupted or time-limited job (its id or checkpoint
        name; default: their latest) to continue from its last saved epoch for ``time_limit_s``
        more seconds (default: the recipe's budget within the server's limit)."""
        time_limit_s = min(time_limit_s or self.time_limit_s(None), self.limits.job_time_limit_min * 60)
        with self._lock:
            records = self.records()
            mine = [r for r in records if r["owner"] == owner]
            if job:
                mine = [r for r in mine if job in (r["id"], r["checkpoint"])]
            if not mine:
                raise ValueError(f"no fine-tune job {job!r} of yours to resume" if job else "you have no fine-tune job")
            record = mine[-1]
            if record["state"] in UNFINISHED:
                raise ValueError(f"the job training {record['checkpoint']!r} is still {record['state']}")
            if not resumable(record):
                raise ValueError(
                    f"the job training {record['checkpoint']!r} cannot be resumed: it {record['state']}"
                    " with no saved epoch to continue from (or its data has expired)"
                )
            self._check_room(owner, records)
            epoch = len(saved_history(Path(record["target"])))
            record.update(
                state="queued",
                message=f"to resume after epoch {epoch}",
                resume=True,
                created=time.time(),
                started=0.0,
                finished=0.0,
                time_limit_s=time_limit_s,
                resumed=record.get("resumed", 0) + 1,
            )
            write_record(self._path(record["id"]), record)
        self._wake.set()
        return self.status(owner)

    def _check_room(self, owner: str, records: list[dict]) -> None:
        mine = [r for r in records if r["owner"] == owner and r["state"] in UNFINISHED]
        if len(mine) >= self.limits.max_jobs_per_visitor:
            raise ValueError(
                f"you already have a fine-tune job {mine[-1]['state']}; wait for it or stop it first"
                f" (MMDEMO_MAX_JOBS_PER_VISITOR={self.limits.max_jobs_per_visitor})"
            )
        if sum(r["state"] == "queued" for r in records) >= self.limits.max_queued_jobs:
            raise ValueError(
                f"queue full: {self.limits.max_queued_jobs} fine-tune jobs are waiting; try again later"
                " (MMDEMO_MAX_QUEUED_JOBS)"
            )

    def stop(self, owner: str) -> dict:
        """Stop the visitor's unfinished job, at any phase."""
        with self._lock:
            mine = [r for r in self.records() if r["owner"] == owner and r["state"] in UNFINISHED]
            for record in mine:
                if record["id"] == self._running_id:
                    self._stop.set()
                    self._stop_requested_at = time.monotonic()
                else:  # still queued: never started
                    record.update(state="stopped", message="stopped before it started", finished=time.time())
                    self._finish(record)
        self._wake.set()
        return self.status(owner)

    def wait(self, owner: str, timeout: float | None = None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running(owner) and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.2)
        return self.status(owner)

    def close(self) -> None:
        """Stop the scheduler and terminate a running worker (its job shows as interrupted)."""
        with self._lock:
            self._closed = True
            self._wake.set()
            if self._process is not None and self._process.is_alive():
                self._process.terminate()
                self._process.join(5)

    # --- the scheduler -------------------------------------------------------------------
    def _schedule(self) -> None:
        while not self._closed:
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._tick()
            except Exception:  # the scheduler must survive anything a job does
                log.exception("job scheduler")

    def _tick(self) -> None:
        with self._lock:
            if self._closed:  # a worker terminated by close() stays unfinished: interrupted at the next start
                return
            if self._process is not None:
                grace = STOP_GRACE_S.get(self._current_state(), 0.0)
                if (
                    self._stop_requested_at is not None
                    and self._process.is_alive()
                    and time.monotonic() - self._stop_requested_at > grace
                ):
                    self._process.terminate()  # did not stop by itself (e.g. while encoding data)
                    self._process.join(5)
                if self._process.is_alive():
                    return
                self._reap()
            if self._closed:
                return
            queued = [r for r in self.records() if r["state"] == "queued"]
            if queued:
                self._launch(queued[0])

    def _current_state(self) -> str:
        try:
            return read_record(self._path(self._running_id))["state"]
        except (OSError, ValueError):
            return "running"

    def _launch(self, record: dict) -> None:
        record.update(state="preparing", message="preparing: starting the worker", started=time.time())
        write_record(self._path(record["id"]), record)
        self._stop = self._context.Event()
        self._stop_requested_at = None
        self._running_id = record["id"]
        self._running_owner = record["owner"]
        self._process = self._context.Process(
            target=run_job, args=(str(self._path(record["id"])), self._stop), name=f"mmdemo-job-{record['id']}"
        )
        self._process.start()

    def _reap_if_ended(self) -> None:
        """A worker that wrote its final state is ending: reap it now (under the lock), so a job
        never shows as finished while its upload folder is still there."""
        if self._process is None:
            return
        try:
            finished = read_record(self._path(self._running_id))["state"] in FINISHED
        except (OSError, ValueError):
            return
        if finished:
            self._process.join(10)
            if not self._process.is_alive():
                self._reap()

    def _reap(self) -> None:
        """The worker ended: make its record final and delete its upload folder."""
        record = read_record(self._path(self._running_id))
        code = self._process.exitcode
        if record["state"] in UNFINISHED:  # it did not finish its own record: stopped or crashed
            if self._stop_requested_at is not None:
                kept = " (the best epoch so far is kept)" if Path(record["target"]).exists() else ""
                record.update(state="stopped", message=f"stopped during {record['state']}{kept}")
            else:
                why = "killed, possibly out of memory" if code in (-9, 137) else f"exit code {code}"
                record.update(state="failed", message=f"the training process ended unexpectedly ({why})")
            record["finished"] = time.time()
            log.warning("job %s: %s", record["id"], record["message"])
        self._finish(record)
        self._process.close()
        self._process = None
        self._running_id = None
        self._running_owner = None
        self._stop_requested_at = None

    def _finish(self, record: dict) -> None:
        """Make the record final; its upload folder goes unless the run can be resumed."""
        write_record(self._path(record["id"]), record)
        if not resumable(record):
            shutil.rmtree(record["data"]["folder"], ignore_errors=True)


def resumable(record: dict) -> bool:
    """Whether a finished job can continue: its run saved a resume state and its data is kept."""
    return (
        record["state"] in FINISHED
        and (resume_dir(Path(record["target"])) / "state.json").is_file()
        and Path(record["data"]["folder"]).is_dir()
    )


def _drop_resume(record: dict) -> None:
    """Delete what a finished job kept for a resume: its upload folder and its resume state."""
    if record["state"] in FINISHED:
        shutil.rmtree(record["data"]["folder"], ignore_errors=True)
        shutil.rmtree(resume_dir(Path(record["target"])), ignore_errors=True)


def _public(record: dict, queued: list[str], stopping: bool, can_resume: bool = False) -> dict:
    """What the API and the UI show of a record (no server paths)."""
    state = record["state"]
    message = record["message"]
    if state == "queued":
        position = queued.index(record["id"]) + 1 if record["id"] in queued else 0
        message = f"queued: position {position} of {len(queued)}"
        if record.get("resume"):
            message += f" ({record['message']})"
    elif stopping:
        message = "stopping ..."
    end = record["finished"] or time.time()
    return {
        "state": state,
        "message": message,
        "progress": round(record["progress"], 4),
        "epoch": record["epoch"],
        "epochs": record["epochs"],
        "history": record["history"],
        "report": record["report"],
        "checkpoint": record["checkpoint"],
        "job": record["id"],
        "queue_position": (queued.index(record["id"]) + 1) if record["id"] in queued else 0,
        "elapsed_s": round(end - record["started"], 1) if record["started"] else 0.0,
        "plan": record.get("plan", ""),
        "estimate_s": record.get("estimate_s", 0.0),
        "time_limit_s": record.get("time_limit_s") or 0.0,
        "stopped_by": record.get("stopped_by"),
        "resumable": can_resume,
    }
