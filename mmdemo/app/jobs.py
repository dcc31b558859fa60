"""Fine-tune jobs for the app: a fair queue, one job running at a time, each in its own
worker program (``python -m mmdemo.app.worker``, a child of the serving process), each with a record
on disk.

States: ``queued`` (position shown), ``preparing`` (reading and encoding the data), ``running``
(training), then ``done``, ``failed``, ``stopped``, or ``interrupted`` (the server stopped while
the job was unfinished). The time a job shows is on its one clock (``clock.py``): the server and
its worker mark each phase change in the record in wall time, and the status sums the phases
over the first run and every resume.

Workers are tied to their server: the server holds the write end of each worker's stdin, writes
``stop`` there for a Stop, and closes it when it shuts down; a worker whose stdin ends (the server
got SIGTERM, crashed or was killed) stops at its next step and records its job as
``interrupted``, resumable from its last saved epoch. The record names the server and the worker
(``folders.process_tag``: pid and start time, so a reused pid does not pass). A new server
adopts what it finds: a queued job whose data is there stays queued and runs; a job whose worker
is still alive (it is ending: its pipe closed) is waited for before anything else runs, killed
after ``ORPHAN_GRACE_S``, and then shown interrupted if it left its record unfinished; a job of
another live server sharing the folder is left alone. Nothing a queued, running or resumable job
needs is deleted (``kept_data``).

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
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

from ..audit.review import apply_review
from ..datasets.csv_table import Dataset, check_trainable
from ..folders import alive, process_tag, still_running
from ..training.finetune import FinetuneRequest, plan, resume_dir
from ..training.recipe import DEFAULT_BUDGET_S
from . import clock
from .registry import CheckpointRegistry
from .settings import Limits, data_dir
from .worker import STOP_LINE, read_record, saved_epoch, saved_history, write_record

log = logging.getLogger("mmdemo.app.jobs")

UNFINISHED = ("queued", "preparing", "running")
FINISHED = ("done", "failed", "stopped", "interrupted")
STOP_GRACE_S = {"queued": 0.0, "preparing": 10.0, "running": 30.0}  # then the worker is killed
CLOSE_WAIT_S = 10.0  # at shutdown, the time a told worker gets to save and end (then it ends on its own)
ORPHAN_GRACE_S = 40.0  # a previous server's live worker: then SIGTERM, and SIGKILL 10 s later
PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # put first on the worker's import path
IDLE = {"state": "idle", "message": "No fine-tune job has run yet."}


class DataSource(NamedTuple):
    """Where a job's data is: the upload folder (deleted when the job ends), the CSV in it and
    its columns."""

    folder: Path
    csv: Path
    image_column: str = "image"
    text_column: str | list[str] = "text"  # several: joined in this order
    label_column: str | list[str] = "label"  # several: one task each
    name: str = "data.csv"  # the name the user uploaded it under (for the model card)
    group_column: str = ""  # the column naming each row's source (the split keeps a group together)


def source_record(source: DataSource) -> dict:
    """A job's data source as its record keeps it: paths as text, several columns as a list."""
    return {k: list(v) if isinstance(v, list | tuple) else str(v) for k, v in source._asdict().items()}


class JobManager:
    """A queue of fine-tune jobs run one at a time in worker processes."""

    def __init__(self, registry: CheckpointRegistry, jobs_dir: str | Path | None = None, limits: Limits | None = None):
        self.registry = registry
        self.limits = limits or registry.limits
        self.dir = Path(jobs_dir) if jobs_dir else data_dir() / "jobs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._process: subprocess.Popen | None = None  # the running worker; its stdin is the link
        self._running_id: str | None = None
        self._running_owner: str | None = None
        self._stop_requested_at: float | None = None
        self._closed = False
        self._tag = process_tag()
        self._orphans: dict[str, Orphan] = {}  # job id -> a previous server's worker, still alive
        self._startup_s = 0.0  # the last worker's start-up here, until the next one measures its own
        self._adopt()
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

    def _adopt(self) -> None:
        """At start-up, what the previous server left: queued jobs with their data stay queued
        (they run here); a job whose worker still lives is waited for (``_watch_orphans``); one
        of another live server is left alone; any other unfinished job is interrupted. Records
        (and an interrupted job's data) older than the anonymous time to live go."""
        ttl_h = self.limits.anonymous_ttl_hours
        for record in self.records():
            state = record["state"]
            if state in UNFINISHED:
                server = record.get("server")
                if server and server != self._tag and alive(server):
                    continue  # another server on this data folder runs it
                worker = record.get("worker")
                if state != "queued" and worker and still_running(worker):
                    self._orphans[record["id"]] = Orphan(worker, time.monotonic())
                elif state == "queued" or not worker:  # never started: runs here if its data is there
                    if Path(record["data"]["folder"]).is_dir():
                        if state != "queued":
                            clock.enter(record, "queued")
                            record.update(message="waiting for its turn", started=0.0)
                            write_record(self._path(record["id"]), record)
                    else:
                        self._interrupt(record, f"{state} (and its data is gone)")
                else:
                    self._interrupt(record, state)
            elif state in FINISHED and time.time() - record["finished"] > ttl_h * 3600:
                _drop_resume(record)  # a resumable job's data and state
                self._path(record["id"]).unlink(missing_ok=True)
        if self._orphans:
            log.info("start-up: waiting for %d fine-tune worker(s) of the previous server to end", len(self._orphans))

    def _interrupt(self, record: dict, was: str) -> None:
        """An unfinished job whose worker is gone: interrupted, resumable if an epoch was saved."""
        if (resume_dir(Path(record["target"])) / "state.json").is_file():
            then = f"Resume continues after epoch {saved_epoch(Path(record['target']))}"
        else:
            then = f"its data is kept for {self.limits.anonymous_ttl_hours} h"
        clock.enter(record, "interrupted")
        record.update(finished=time.time(), message=f"the server restarted while this job was {was}; {then}")
        write_record(self._path(record["id"]), record)
        log.warning("job %s: %s", record["id"], record["message"])

    def kept_data(self) -> set[Path]:
        """Upload folders that jobs still need (never swept): those of queued, running and
        interrupted jobs, and of finished jobs that can be resumed."""
        return {
            Path(r["data"]["folder"])
            for r in self.records()
            if r["state"] in UNFINISHED or r["state"] == "interrupted" or resumable(r) or reviewable(r)
        }

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
                    waiting_s=0.0, preparing_s=0.0, running_s=0.0, left_s=None, plan="", estimate_s=0.0, startup_s=0.0,
                    time_limit_s=0.0, resumable=False,
                )  # fmt: skip
            record = mine[-1]
            queued = [r["id"] for r in records if r["state"] == "queued"]
            stopping = (record["id"] == self._running_id and self._stop_requested_at is not None) or (
                record["id"] in self._orphans and self._orphans[record["id"]].stop
            )
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
            raise ValueError(f"the time budget must be 1-{limit_min} minutes on this server, got {minutes:g}")
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
            raise ValueError(f"epochs must be 1-{self.limits.max_epochs} on this server, got {recipe.settings.epochs}")
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
        review: dict | None = None,
    ) -> dict:
        """Queue a job trained by the recipe, with ``overrides`` (settings the visitor set) winning
        over its choices, within ``time_limit_s`` (default: the recipe's budget, capped by the
        server's job time limit); ``review``: an audit's decisions (``{"decisions", "record"}``),
        applied by the worker to the rows it reads. ValueError (nothing queued) names what is wrong."""
        if review:  # planned and checked on the rows the job will train on
            dataset = apply_review(dataset, review["decisions"])
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
                "startup_s": self._startup_s,
                "time_limit_s": time_limit_s,
                "data": source_record(source),
            }
            if review:
                record["review"] = review
            clock.enter(record, "queued", record["created"])  # the job's clock starts: waiting
            write_record(self._path(job_id), record)
        self._wake.set()
        return self.status(owner)

    def start_audit(self, owner: str, dataset: Dataset, source: DataSource, base: Path | None, digest: str) -> dict:
        """Queue an audit of ``dataset`` (audit/core.py ``run_audit``, with ``base``'s encoders
        when given) as a job of ``owner``: it waits its turn like a fine-tune, shows its progress,
        and Stop ends it. Its findings stay in its record with the visitor's review decisions
        (``decide``); its upload folder stays while it is the visitor's latest job, for the review's
        pictures. ``digest``: the uploaded CSV's content hash (the review applies to that CSV only)."""
        check_trainable(dataset)
        with self._lock:
            records = self.records()
            self._check_room(owner, records)
            for older in (r for r in records if r["owner"] == owner and r["state"] in FINISHED):
                _drop_resume(older)  # only the latest job keeps its data
            job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
            record = {
                "id": job_id,
                "kind": "audit",
                "owner": owner,
                "state": "queued",
                "message": "waiting for its turn",
                "created": time.time(),
                "started": 0.0,
                "finished": 0.0,
                "progress": 0.0,
                "epoch": 0,
                "epochs": 0,
                "history": [],
                "report": {},
                "checkpoint": "",
                "target": str(self.dir / f"{job_id}.audit"),  # never written: an audit saves no checkpoint
                "base": str(base) if base else None,
                "overrides": {},
                "plan": f"audit of {len(dataset.examples):,} rows: wrong labels, duplicates and outliers",
                "time_limit_s": 0.0,
                "digest": digest,
                "audit": {},
                "decisions": {},
                "data": source_record(source),
            }
            clock.enter(record, "queued", record["created"])
            write_record(self._path(job_id), record)
        self._wake.set()
        return self.status(owner)

    def audit(self, owner: str) -> dict | None:
        """The visitor's latest audit record (findings, decisions, state), or None."""
        mine = [r for r in self.records() if r["owner"] == owner and r.get("kind") == "audit"]
        return mine[-1] if mine else None

    def decide(self, owner: str, rows: list[int], decision: dict | None) -> dict:
        """Record the visitor's decision (``review.check_decision``; None: undo) for ``rows`` of
        their latest finished audit; returns that audit's record."""
        with self._lock:
            record = self.audit(owner)
            if record is None or record["state"] != "done":
                raise ValueError("audit the data first: there is no finished audit of yours to review")
            flagged = {int(f["row"]) for f in record["audit"].get("findings", [])}
            unknown = sorted(set(rows) - flagged)
            if unknown:
                raise ValueError(f"row {unknown[0]} is not among the audit's findings")
            for row in rows:
                if decision is None:
                    record["decisions"].pop(str(row), None)
                else:
                    record["decisions"][str(row)] = decision
            write_record(self._path(record["id"]), record)
            return record

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
            history = saved_history(Path(record["target"]))
            epoch = saved_epoch(Path(record["target"]))
            clock.enter(record, "queued")  # the earlier segments' time stays in the sums
            record.update(
                message=f"to resume after epoch {epoch}",
                resume=True,
                created=time.time(),
                started=0.0,
                finished=0.0,
                time_limit_s=time_limit_s,
                resumed=record.get("resumed", 0) + 1,
                history=history,  # epochs after the last saved one are trained again: not shown twice
                epoch=epoch,
            )
            write_record(self._path(record["id"]), record)
        self._wake.set()
        return self.status(owner)

    def _check_room(self, owner: str, records: list[dict]) -> None:
        mine = [r for r in records if r["owner"] == owner and r["state"] in UNFINISHED]
        if len(mine) >= self.limits.max_jobs_per_visitor:
            raise ValueError(f"you already have a fine-tune job {mine[-1]['state']}; wait for it or stop it first")
        if sum(r["state"] == "queued" for r in records) >= self.limits.max_queued_jobs:
            raise ValueError(f"queue full: {self.limits.max_queued_jobs} fine-tune jobs are waiting; try again later")

    def stop(self, owner: str) -> dict:
        """Stop the visitor's unfinished job, at any phase."""
        with self._lock:
            mine = [r for r in self.records() if r["owner"] == owner and r["state"] in UNFINISHED]
            for record in mine:
                if record["id"] == self._running_id:
                    self._tell_worker(STOP_LINE)
                    self._stop_requested_at = self._stop_requested_at or time.monotonic()
                elif record["id"] in self._orphans:  # a previous server's worker, ending: hurry it
                    orphan = self._orphans[record["id"]]
                    orphan.stop = True
                    _signal(orphan.tag, signal.SIGTERM)
                elif record["state"] == "queued":  # never started
                    clock.enter(record, "stopped")
                    record.update(message="stopped before it started", finished=time.time())
                    self._finish(record)
        self._wake.set()
        return self.status(owner)

    def wait(self, owner: str, timeout: float | None = None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running(owner) and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.2)
        return self.status(owner)

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Stop scheduling and tell the running worker the server is going (its stdin closes):
        it ends at its next step and records its job as interrupted, resumable. Waits up to
        ``wait_s`` for it; a worker still saving then finishes on its own (the next server waits
        for it before running anything)."""
        with self._lock:
            self._closed = True
            self._wake.set()
            process = self._process
            if process is not None and process.stdin is not None:
                try:
                    process.stdin.close()
                except OSError:
                    pass
        if process is not None:
            try:
                process.wait(wait_s)
            except subprocess.TimeoutExpired:
                log.warning("fine-tune worker %d still saving at shutdown; it ends on its own", process.pid)
        self._scheduler.join(2)

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
            if self._closed:  # a worker told by close() records its own end
                return
            if self._orphans:
                self._watch_orphans()
                if self._orphans:  # no second job runs while one lives
                    return
            if self._process is not None:
                grace = STOP_GRACE_S.get(self._current_state(), 0.0)
                if (
                    self._stop_requested_at is not None
                    and self._process.poll() is None
                    and time.monotonic() - self._stop_requested_at > grace
                ):
                    self._process.kill()  # did not stop by itself (e.g. inside one long operation)
                    self._process.wait(5)
                if self._process.poll() is None:
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

    def _watch_orphans(self) -> None:
        """A previous server's workers: ended ones are made final; live ones are hurried after
        ``ORPHAN_GRACE_S`` (SIGTERM: they stop at their next step) and killed 10 s later."""
        for job_id, orphan in list(self._orphans.items()):
            if still_running(orphan.tag):
                waited = time.monotonic() - orphan.since
                if waited > ORPHAN_GRACE_S + 10:
                    _signal(orphan.tag, signal.SIGKILL)
                elif waited > ORPHAN_GRACE_S or orphan.stop:
                    _signal(orphan.tag, signal.SIGTERM)
                continue
            del self._orphans[job_id]
            try:
                record = read_record(self._path(job_id))
            except (OSError, ValueError):
                continue
            if orphan.stop and record["state"] in UNFINISHED + ("interrupted",):
                was = _phase_words(record)
                clock.enter(record, "stopped")
                record.update(message=f"stopped during {was}", finished=time.time())
                self._finish(record)
            elif record["state"] in UNFINISHED:
                self._interrupt(record, record["state"])
            elif not resumable(record) and record["state"] != "interrupted":
                self._finish(record)  # it ran to its end: its upload folder goes

    def _launch(self, record: dict) -> None:
        path = self._path(record["id"]).resolve()
        now = time.time()
        clock.enter(record, "preparing", now)  # preparing counts from here, the worker's start-up included
        record.update(message="preparing: starting the worker process", started=now, server=self._tag)
        write_record(path, record)
        self._stop_requested_at = None
        self._running_id = record["id"]
        self._running_owner = record["owner"]
        env = dict(os.environ)  # the worker imports this package, wherever the server was started
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_PARENT), env.get("PYTHONPATH")) if p)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "mmdemo.app.worker", str(path)], stdin=subprocess.PIPE, env=env, close_fds=True
        )
        # named at once, before the worker (still importing) first writes the record: a server
        # that dies now leaves a record whose worker the next server recognises
        record.update(pid=self._process.pid, worker=process_tag(self._process.pid))
        write_record(path, record)

    def _tell_worker(self, line: bytes) -> None:
        try:
            self._process.stdin.write(line)
            self._process.stdin.flush()
        except (OSError, ValueError):  # it has ended already: the scheduler reaps it
            pass

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
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                return
            self._reap()

    def _reap(self) -> None:
        """The worker ended: make its record final and delete its upload folder."""
        record = read_record(self._path(self._running_id))
        code = self._process.returncode
        self._startup_s = record.get("startup_s") or self._startup_s
        if record["state"] in UNFINISHED:  # it did not finish its own record: stopped or crashed
            if self._stop_requested_at is not None:
                kept = " (the best epoch so far is kept)" if Path(record["target"]).exists() else ""
                was = _phase_words(record)
                clock.enter(record, "stopped")
                record.update(message=f"stopped during {was}{kept}")
            else:
                why = "killed, possibly out of memory" if code in (-9, 137) else f"exit code {code}"
                what = "audit" if record.get("kind") == "audit" else "training"
                clock.enter(record, "failed")
                record.update(message=f"the {what} process ended unexpectedly ({why})")
            record["finished"] = time.time()
            log.warning("job %s: %s", record["id"], record["message"])
        self._finish(record)
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process = None
        self._running_id = None
        self._running_owner = None
        self._stop_requested_at = None

    def _finish(self, record: dict) -> None:
        """Make the record final; its upload folder goes unless the run can be resumed (or it
        was interrupted: kept for the time to live, as its message says)."""
        write_record(self._path(record["id"]), record)
        if not resumable(record) and not reviewable(record) and record["state"] != "interrupted":
            shutil.rmtree(record["data"]["folder"], ignore_errors=True)


@dataclass
class Orphan:
    """A worker of a previous server, still alive at start-up: its ``process_tag``, since when
    this server waits for it (monotonic), and whether its visitor asked to stop it."""

    tag: str
    since: float
    stop: bool = False


def _signal(tag: str, sig: int) -> None:
    """Send ``sig`` to the process of ``tag`` if it is still that process."""
    if still_running(tag):
        try:
            os.kill(int(tag.split(".")[0]), sig)
        except OSError:
            pass


def resumable(record: dict) -> bool:
    """Whether a finished job can continue: its run saved a resume state and its data is kept."""
    return (
        record["state"] in FINISHED
        and (resume_dir(Path(record["target"])) / "state.json").is_file()
        and Path(record["data"]["folder"]).is_dir()
    )


def reviewable(record: dict) -> bool:
    """Whether a record is a finished audit whose findings can be reviewed (it keeps its data)."""
    return record.get("kind") == "audit" and record["state"] == "done"


def _drop_resume(record: dict) -> None:
    """Delete what a finished job kept for a resume: its upload folder and its resume state."""
    if record["state"] in FINISHED:
        shutil.rmtree(record["data"]["folder"], ignore_errors=True)
        shutil.rmtree(resume_dir(Path(record["target"])), ignore_errors=True)


def _phase_words(record: dict) -> str:
    """The phase a job was in, for a message: 'epoch N' while training, else its state."""
    return f"epoch {record['epoch']}" if record["state"] == "running" and record.get("epoch") else record["state"]


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
    now = time.time()
    times = clock.times(record, now)
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
        "elapsed_s": times["elapsed"],  # waiting + preparing + running, every segment
        "waiting_s": times["waiting"],
        "preparing_s": times["preparing"],
        "running_s": times["running"],
        "left_s": clock.time_left(record, now),  # None until this segment's training has a rate
        "plan": record.get("plan", ""),
        "estimate_s": record.get("estimate_s", 0.0),
        "startup_s": record.get("startup_s", 0.0),  # the worker's start-up (measured), not in the estimate
        "time_limit_s": record.get("time_limit_s") or 0.0,
        "stopped_by": record.get("stopped_by"),
        # the finished model beside the checkpoint it started from (training/finetune.py start_comparison)
        "start_comparison": record.get("start_comparison"),
        "resumable": can_resume,
        "kind": record.get("kind", "finetune"),
    }
