"""The fine-tune worker: one job in its own process (multiprocessing, spawn context).

The server starts ``run_job(record_path, stop)`` in a fresh process, so a crash or an
out-of-memory in training cannot take the server down, Stop can end it at any phase (the
server terminates it when it does not stop by itself), and its memory is returned when it
ends. The job record (JSON, see ``jobs.JobRecord``) is the only channel: the worker writes its
progress there, the server reads it. Training is the one fine-tune path, ``finetune()``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("mmdemo.worker")

PROGRESS_WRITE_INTERVAL_S = 0.5


def write_record(path: Path, record: dict) -> None:
    """Replace the record atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def read_record(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def run_job(record_path: str, stop) -> None:
    """Entry point of the worker process. ``stop`` is a multiprocessing Event."""
    from .data import read_csv
    from .finetune import FinetuneRequest, finetune, resume

    path = Path(record_path)
    record = read_record(path)
    last_write = [0.0]

    def update(force: bool = False, **changes) -> None:
        record.update(changes)
        now = time.monotonic()
        if force or now - last_write[0] >= PROGRESS_WRITE_INTERVAL_S:
            write_record(path, record)
            last_write[0] = now

    def progress(event: dict) -> None:
        stage = event["stage"]
        if stage == "train":
            epochs = max(1, event["epochs"])
            update(
                force=record["state"] != "running",
                state="running",
                epoch=event["epoch"],
                progress=((event["epoch"] - 1) + event["step"] / event["steps"]) / epochs,
                message=f"epoch {event['epoch']}/{event['epochs']}, step {event['step']}/{event['steps']}, loss {event['loss']:.4f}",
            )
        elif stage == "plan":  # the recipe's choices and time estimate, shown in the job status
            update(force=True, plan=event["message"], estimate_s=round(event["estimate_s"], 1))
        elif stage == "epoch":
            update(force=True, history=record["history"] + [{k: v for k, v in event.items() if k != "stage"}])
        elif "total" in event:
            update(message=f"preparing: {stage} {event['done']}/{event['total']}")
        elif "message" in event:
            update(message=f"preparing: {event['message']}")

    update(force=True, state="preparing", message="preparing: reading the data", started=time.time(), pid=os.getpid())
    try:
        source = record["data"]
        if record.get("resume"):  # continue from the last saved epoch (finetune.resume)
            update(force=True, history=saved_history(Path(record["target"])))
            result = resume(Path(record["target"]), record.get("time_limit_s"), progress, stop.is_set)
        else:
            dataset = read_csv(
                source["csv"],
                source["image_column"],
                source["text_column"],
                source["label_column"],
                image_root=source["folder"],
                confine=True,
            )
            request = FinetuneRequest(
                dataset=dataset,
                out=Path(record["target"]),
                overrides=record.get("overrides") or {},  # the recipe chooses everything else
                val_fraction=record["val_fraction"],
                init=Path(record["base"]) if record.get("base") else None,
                overwrite=record["overwrite"],
                description=f"Fine-tuned in the mmdemo app on {source.get('name', 'an uploaded CSV')}.",
                time_limit_s=record.get("time_limit_s"),
            )
            result = finetune(request, progress, stop.is_set)
    except (ValueError, RuntimeError) as e:  # the data or the stop: a one-line reason
        stopped = stop.is_set() and isinstance(e, RuntimeError)
        log.warning("job %s %s: %s", record["id"], "stopped" if stopped else "failed", e)
        update(force=True, state="stopped" if stopped else "failed", message=str(e), finished=time.time())
        return
    except Exception as e:  # a bug: the traceback goes to the log, the user gets its type and text
        log.exception("job %s failed", record["id"])
        update(force=True, state="failed", message=f"training failed: {type(e).__name__}: {e}", finished=time.time())
        return
    metrics = result.record["metrics"]
    state = "stopped" if result.stopped_by == "stop" else "done"
    update(
        force=True,
        state=state,
        progress=1.0 if state == "done" else record["progress"],
        report={**result.report, "calibration": result.record.get("calibration")},  # the tab's diagram
        finished=time.time(),
        stopped_by=result.stopped_by,
        message=(
            f"{'stopped early; ' if state == 'stopped' else ''}"
            f"{'stopped by the time limit; ' if result.stopped_by == 'time limit' else ''}"
            f"saved checkpoint {result.checkpoint.name!r} (best epoch {result.record['best_epoch']}, "
            f"validation accuracy {metrics.get('val_accuracy', float('nan')):.3f})"
        ),
    )


def saved_history(target: Path) -> list[dict]:
    """The epochs a resumed run starts after: the history in its resume state's JSON half
    (finetune.save_resume_state), so epochs cut off after the last save are not shown twice;
    [] when there is none."""
    from .finetune import resume_dir

    try:
        return json.loads((resume_dir(target) / "state.json").read_text())["history"]
    except (OSError, ValueError, KeyError):
        return []
