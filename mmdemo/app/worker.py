"""The fine-tune worker: one job in its own program, ``python -m mmdemo.app.worker <record>``.

The server (``jobs.JobManager``) starts it as a child process, so a crash or an out-of-memory in
training cannot take the server down, Stop can end it at any phase (the server kills it when it
does not stop by itself), and its memory is returned when it ends. It is a program of its own,
not a multiprocessing child, because spawning re-imports the server's main script (``app.py``)
in the child: here nothing runs but this module and what training needs (no UI, no ``App``, no
start-up clean-up, no scheduler).

Channels: the job record (JSON, written atomically) carries the worker's progress to the server;
the worker's stdin carries the server's word to the worker. A ``stop`` line is a Stop: the run
ends at its next step and the record says ``stopped``. End of input without a stop means the
server is gone (SIGTERM, crash, kill): the run ends at its next step as after a Stop, keeps its
resume state, and the record says ``interrupted``, resumable. SIGTERM to the worker itself does
the same; Ctrl-C in a terminal (SIGINT to the whole group) is left to the server, which closes
the pipe. Training is the one fine-tune path, ``finetune()``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from . import clock

log = logging.getLogger("mmdemo.app.worker")

PROGRESS_WRITE_INTERVAL_S = 0.5
STOP_LINE = b"stop\n"


def write_record(path: Path, record: dict) -> None:
    """Replace the record atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def read_record(path: Path) -> dict:
    return json.loads(Path(path).read_text())


class ServerLink:
    """What the server says through the worker's stdin: ``stop`` (a Stop was asked for) and
    ``gone`` (end of input with no stop: the server stopped or died; or SIGTERM to the worker)."""

    def __init__(self, fd: int = 0):
        self.stop = threading.Event()
        self.gone = threading.Event()
        self._fd = fd

    def listen(self) -> ServerLink:
        self.reader = threading.Thread(target=self._read, name="mmdemo-worker-stdin", daemon=True)
        self.reader.start()
        return self

    def _read(self) -> None:
        # os.read on the descriptor, not sys.stdin: a daemon thread blocked inside a buffered
        # reader holds its lock, and the interpreter aborts on it at exit
        pending = b""
        try:
            while chunk := os.read(self._fd, 256):
                pending += chunk
                if STOP_LINE in pending:
                    self.stop.set()
                pending = pending[-len(STOP_LINE) :]
        except OSError:  # a closed or broken pipe is the same as its end
            pass
        if not self.stop.is_set():
            self.gone.set()

    def is_set(self) -> bool:
        """Whether the run should end at its next step."""
        return self.stop.is_set() or self.gone.is_set()


def run_job(record_path: str, link: ServerLink) -> None:
    """Run the job of the record at ``record_path`` to its end, writing its progress there;
    ``link.is_set()`` ends it at its next step."""
    from ..folders import process_tag
    from ..training.features import PHASE_WORDS
    from ..training.finetune import FinetuneRequest, finetune, resume, resume_dir

    path = Path(record_path)
    record = read_record(path)
    last_write = [0.0]

    def update(force: bool = False, **changes) -> None:
        if "state" in changes and changes["state"] != record["state"]:
            clock.enter(record, changes.pop("state"))  # the job's one clock: its phase sums
        record.update(changes)
        now = time.monotonic()
        if force or now - last_write[0] >= PROGRESS_WRITE_INTERVAL_S:
            write_record(path, record)
            last_write[0] = now

    def progress(event: dict) -> None:
        stage = event["stage"]
        if stage == "train":
            epochs = max(1, event["epochs"])
            first = record["state"] != "running"
            update(
                force=first,
                state="running",
                epoch=event["epoch"],
                progress=((event["epoch"] - 1) + event["step"] / event["steps"]) / epochs,
                message=f"epoch {event['epoch']}/{event['epochs']}, step {event['step']}/{event['steps']}, loss {event['loss']:.4f}",
            )
            if first:  # the time left is measured from the end of this segment's first step
                clock.start_rate(record)
        elif stage == "plan":  # the recipe's choices and time estimate; its time budget starts now
            update(
                force=True, plan=event["message"], estimate_s=round(event["estimate_s"], 1), budget_since=time.time()
            )
        elif stage == "split":  # how the validation rows were chosen, under the plan
            update(force=True, plan=f"{record.get('plan') or ''}\nsplit: {event['message']}".strip())
        elif stage == "epoch":
            update(force=True, history=record["history"] + [{k: v for k, v in event.items() if k != "stage"}])
        elif "total" in event:
            words = PHASE_WORDS.get(stage, stage)
            update(message=f"preparing: {words} {event['done']:,}/{event['total']:,}")
        elif stage == "compare":  # after training: the starting checkpoint on the same validation rows
            update(force=True, message=event["message"])
        elif "message" in event:  # a new phase: shown at once, however short
            update(force=True, message=f"preparing: {event['message']}")

    def interrupted(was: str) -> dict:
        """The final state when the server went away: resumable when an epoch was saved."""
        target = Path(record["target"])
        if (resume_dir(target) / "state.json").is_file():
            then = f"Resume continues after epoch {saved_epoch(target)}"
        else:
            then = "no epoch was saved to resume from"
        return dict(state="interrupted", message=f"the server stopped while this job was {was}; {then}")

    # the server opened the preparing phase when it started this program (its clock runs on)
    update(
        force=True,
        message="preparing: reading the data",
        pid=os.getpid(),
        worker=process_tag(),
        rate_since=0.0,
        budget_since=0.0,
        # the part of preparing no plan estimates (starting Python, importing torch), on the one clock
        startup_s=round(max(0.0, time.time() - record["started"]), 1) if record.get("started") else 0.0,
    )
    if record.get("kind") == "audit":
        run_audit_job(record, link, update)
        return
    try:
        source = record["data"]
        if record.get("resume"):  # continue from the last saved epoch (finetune.resume)
            update(force=True, history=saved_history(Path(record["target"])))
            result = resume(Path(record["target"]), record.get("time_limit_s"), progress, link.is_set)
        else:
            dataset = read_upload(source)
            review = record.get("review")
            if review:  # an audit's decisions, applied to the rows read (the upload is unchanged)
                from ..audit.review import apply_review

                dataset = apply_review(dataset, review["decisions"])
            request = FinetuneRequest(
                dataset=dataset,
                out=Path(record["target"]),
                overrides=record.get("overrides") or {},  # the recipe chooses everything else
                val_fraction=record["val_fraction"],
                init=Path(record["base"]) if record.get("base") else None,
                overwrite=record["overwrite"],
                description=f"Fine-tuned in the mmdemo app on {source.get('name', 'an uploaded CSV')}.",
                time_limit_s=record.get("time_limit_s"),
                review=review["record"] if review else None,
            )
            result = finetune(request, progress, link.is_set)
    except (ValueError, RuntimeError) as e:  # the data or the stop: a one-line reason
        ended = link.is_set() and isinstance(e, RuntimeError)
        if ended and not link.stop.is_set():
            log.warning("job %s interrupted: the server stopped", record["id"])
            update(force=True, **interrupted(record["state"]), finished=time.time())
            return
        log.warning("job %s %s: %s", record["id"], "stopped" if ended else "failed", e)
        update(force=True, state="stopped" if ended else "failed", message=str(e), finished=time.time())
        return
    except Exception as e:  # a bug: the traceback goes to the log, the user gets its type and text
        log.exception("job %s failed", record["id"])
        update(force=True, state="failed", message=f"training failed: {type(e).__name__}: {e}", finished=time.time())
        return
    metrics = result.record["metrics"]
    if result.stopped_by == "stop" and not link.stop.is_set():  # the server went away, not a Stop
        log.warning("job %s interrupted: the server stopped", record["id"])
        update(force=True, **interrupted("running"), finished=time.time(), stopped_by="server stopped")
        return
    state = "stopped" if result.stopped_by == "stop" else "done"
    resumes = saved_epoch(Path(record["target"])) if result.stopped_by in ("stop", "time limit") else 0
    comparison = result.record.get("start_comparison")  # how it does beside the checkpoint it started from
    ending = ending_words(
        record["history"],
        record["epoch"],
        result.stopped_by,
        result.record["best_epoch"],
        resumes,
        result.checkpoint.name,
        metrics.get("val_accuracy", float("nan")),
    )
    update(
        force=True,
        state=state,
        progress=1.0 if state == "done" else record["progress"],
        # the tab's diagram, and every task's figures for a model of several
        report={**result.report, "calibration": result.record.get("calibration"), "tasks": result.record.get("tasks")},
        finished=time.time(),
        stopped_by=result.stopped_by,
        start_comparison=comparison,
        message=ending,
    )


AUDIT_PHASES = {"hash images": 0.05, "encode": 0.45, "labels": 0.9, "images": 1.0}  # progress at each phase's end
AUDIT_CHUNKS = {"encode images": ("hash images", "encode"), "label folds": ("encode", "labels")}
MAX_FINDINGS = 2000  # kept in the record for the review (audit.csv from the CLI has them all)
REVIEW_FOLDER = ".review"  # in the upload folder: the findings' pictures, small
THUMBNAIL_PX = 256
MIN_THUMBNAIL_PX = 128
MAX_THUMBNAILS = 600  # the review list's pictures (the surest findings'); the rest are listed without one


def thumbnails(findings: list[dict], images: dict[int, Path], folder: Path) -> None:
    """A small copy of each finding's picture (``finding["thumbnail"]``: its file name in
    ``folder``), so the review list never sends a large upload to the browser."""
    from PIL import Image, ImageOps

    folder.mkdir(exist_ok=True)
    for i, finding in enumerate(findings):
        name = f"{finding['row']}.png"
        if i >= MAX_THUMBNAILS:
            finding["thumbnail"] = ""
            continue
        finding["thumbnail"] = name
        if (folder / name).is_file():
            continue
        try:
            with Image.open(images[finding["row"]]) as image:
                image.draft("RGB", (THUMBNAIL_PX, THUMBNAIL_PX))  # a JPEG decodes at the size needed
                image = ImageOps.exif_transpose(image)
                image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
                if max(image.size) < MIN_THUMBNAIL_PX:  # a small scan, enlarged with its pixels kept sharp
                    scale = MIN_THUMBNAIL_PX // max(image.size) + 1
                    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
                image.convert("RGB").save(folder / name)
        except (OSError, KeyError, ValueError):  # shown without its picture
            finding["thumbnail"] = ""


def read_upload(source: dict):
    """The job's upload as a data set: its CSV with the visitor's columns, images confined to
    its folder."""
    from ..datasets.csv_table import read_csv

    return read_csv(
        source["csv"],
        source["image_column"],
        source["text_column"],
        source["label_column"],
        image_root=source["folder"],
        confine=True,
        group_column=source.get("group_column") or None,
    )


def run_audit_job(record: dict, link: ServerLink, update) -> None:
    """An audit job (``jobs.JobManager.start_audit``): the data audited with ``run_audit``, its
    findings (most sure first) kept in the record for the visitor's review."""
    from dataclasses import asdict

    import torch

    from ..audit.core import run_audit
    from ..training.recipe import cpu_threads
    from ..training.settings import Stopped

    def progress(event: dict) -> None:
        stage = event["stage"]
        if stage == "audit":
            update(force=True, progress=AUDIT_PHASES.get(event["phase"], record["progress"]),
                   message=f"auditing: {event['message']}")  # fmt: skip
        elif stage in AUDIT_CHUNKS and event.get("total"):
            low, high = (AUDIT_PHASES[p] for p in AUDIT_CHUNKS[stage])
            update(progress=low + (high - low) * event["done"] / event["total"],
                   message=f"auditing: {stage} {event['done']:,}/{event['total']:,}")  # fmt: skip

    source = record["data"]
    try:
        dataset = read_upload(source)
        torch.set_num_threads(max(1, cpu_threads()[0]))
        update(force=True, state="running", message=f"auditing {len(dataset.examples):,} rows", progress=0.01)
        result = run_audit(
            dataset,
            progress,
            link.is_set,
            checkpoint=Path(record["base"]) if record.get("base") else None,
            image_column=source["image_column"],
        )
    except Stopped as e:
        if link.gone.is_set() and not link.stop.is_set():
            update(force=True, state="interrupted", message="the server stopped during the audit; audit again",
                   finished=time.time())  # fmt: skip
        else:
            update(force=True, state="stopped", message=str(e), finished=time.time())
        return
    except ValueError as e:
        update(force=True, state="failed", message=str(e), finished=time.time())
        return
    except Exception as e:  # a bug: the traceback goes to the log, the user gets its type and text
        log.exception("audit %s failed", record["id"])
        update(force=True, state="failed", message=f"the audit failed: {type(e).__name__}: {e}", finished=time.time())
        return
    findings = sorted(result.findings, key=lambda f: (f.score, f.issue, f.row))[:MAX_FINDINGS]  # surest first
    kept = [asdict(f) for f in findings]
    thumbnails(kept, {e.row: e.image for e in dataset.examples}, Path(source["folder"]) / REVIEW_FOLDER)
    counts = result.counts
    names = {"label": "label issue", "near_duplicate": "near duplicate"}
    found = ", ".join(f"{n} {names.get(i, i)}{'s' * (n != 1)}" for i, n in counts.items() if n)
    update(
        force=True,
        state="done",
        progress=1.0,
        finished=time.time(),
        audit={
            "findings": kept,
            "more": max(0, len(result.findings) - MAX_FINDINGS),
            "counts": counts,
            "summary": result.summary(),
            "rows": result.rows,
            "images": result.images,
            "seconds": result.seconds,
        },
        message=f"audit done in {result.seconds:.0f} s: {found or 'nothing found'}"
        + ("; review the findings below" if findings else ""),
    )


def ending_words(
    history: list[dict],
    epoch: int,
    stopped_by: str | None,
    best_epoch: int,
    resumes_after: int,
    checkpoint: str,
    val_accuracy: float,
) -> str:
    """The message of a run that saved its checkpoint. The epochs it names are the records':
    the one a stop cut short (``complete`` false in its epoch record; a Resume trains it again),
    the best one, and the last complete one a Resume continues after (``resumes_after``)."""
    cut = [h["epoch"] for h in history if h.get("complete") is False]
    where = f"stopped during epoch {cut[-1]}" if cut else f"stopped after epoch {epoch}"
    if stopped_by == "stop":
        lead = f"{where}; "
    elif stopped_by == "time limit":
        lead = f"{where} by the time limit; "
    else:
        lead = ""
    best = f"best epoch {best_epoch}{', cut short' if best_epoch in cut else ''}"
    then = f"; Resume continues after epoch {resumes_after}" if resumes_after else ""
    return f"{lead}saved checkpoint {checkpoint!r} ({best}, validation accuracy {val_accuracy:.3f}){then}"


def saved_history(target: Path) -> list[dict]:
    """The epochs a resumed run starts after: the history in its resume state's JSON half
    (finetune.save_resume_state), so epochs cut off after the last save are not shown twice;
    [] when there is none."""
    from ..training.finetune import resume_dir

    try:
        return json.loads((resume_dir(target) / "state.json").read_text())["history"]
    except (OSError, ValueError, KeyError):
        return []


def saved_epoch(target: Path) -> int:
    """The last complete epoch a resume continues after (its resume state's history ends there:
    the state is saved only after a complete epoch); 0 when none was saved."""
    history = saved_history(target)
    return int(history[-1]["epoch"]) if history else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m mmdemo.app.worker <record>``: run that job, listening to the server on stdin."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mmdemo.app.worker <job record .json>", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the server, which closes the pipe
    link = ServerLink(sys.stdin.fileno()).listen()
    signal.signal(signal.SIGTERM, lambda *_: link.gone.set())
    run_job(args[0], link)
    return 0


if __name__ == "__main__":
    sys.exit(main())
