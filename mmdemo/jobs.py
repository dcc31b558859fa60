"""Fine-tune jobs for the app: one background job at a time.

Training runs in a worker thread so the server keeps answering; the job's status is held here,
not in the browser, so it survives a page reload.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field

from .data import Dataset, check_trainable
from .finetune import FinetuneRequest, finetune
from .registry import CheckpointRegistry, validate_name
from .train import TrainSettings


@dataclass
class JobStatus:
    state: str = "idle"  # idle | running | done | failed | stopped
    message: str = "No fine-tune job has run yet."
    progress: float = 0.0
    epoch: int = 0
    epochs: int = 0
    history: list[dict] = field(default_factory=list)
    report: dict = field(default_factory=dict)
    checkpoint: str = ""
    started: float = 0.0
    finished: float = 0.0

    def to_dict(self) -> dict:
        return {
            "state": self.state,
            "message": self.message,
            "progress": round(self.progress, 4),
            "epoch": self.epoch,
            "epochs": self.epochs,
            "history": self.history,
            "report": self.report,
            "checkpoint": self.checkpoint,
            "elapsed_s": round((self.finished or time.time()) - self.started, 1) if self.started else 0.0,
        }


class JobManager:
    """One fine-tune job at a time, in a worker thread."""

    def __init__(self, registry: CheckpointRegistry):
        self.registry = registry
        self._status = JobStatus()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def status(self) -> dict:
        with self._lock:
            return self._status.to_dict()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(
        self,
        dataset: Dataset,
        settings: TrainSettings,
        name: str,
        base: str | None = None,
        overwrite: bool = False,
        val_fraction: float = 0.1,
    ) -> dict:
        name = validate_name(name)
        check_trainable(dataset)
        target = self.registry.writable_dir / name
        if name in self.registry.names() and not overwrite:
            raise ValueError(f"a checkpoint named {name!r} already exists; choose another name or confirm overwriting")
        if (self.registry.shipped_dir / name).exists() and self.registry.shipped_dir != self.registry.writable_dir:
            raise ValueError(f"{name!r} is a shipped checkpoint and cannot be overwritten")
        init = self.registry.path(base) if base else None
        request = FinetuneRequest(
            dataset=dataset,
            out=target,
            settings=settings,
            val_fraction=val_fraction,
            init=init,
            overwrite=overwrite,
            description=f"Fine-tuned in the mmdemo app on {dataset.csv_path.name}.",
        )
        with self._lock:
            if self.running():
                raise ValueError("a fine-tune job is already running; wait for it or stop it first")
            self._stop.clear()
            self._status = JobStatus(
                state="running", message="starting", epochs=settings.epochs, started=time.time(), checkpoint=name
            )
            self._thread = threading.Thread(target=self._run, args=(request,), daemon=True)
            self._thread.start()
        return self.status()

    def stop(self) -> dict:
        if self.running():
            self._stop.set()
            with self._lock:
                self._status.message = "stopping after the current step ..."
        return self.status()

    def wait(self, timeout: float | None = None) -> dict:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status()

    def _progress(self, event: dict) -> None:
        with self._lock:
            s = self._status
            if event["stage"] == "train":
                s.epoch = event["epoch"]
                s.progress = ((event["epoch"] - 1) + event["step"] / event["steps"]) / max(1, event["epochs"])
                s.message = f"epoch {event['epoch']}/{event['epochs']}, step {event['step']}/{event['steps']}, loss {event['loss']:.4f}"
            elif event["stage"] == "epoch":
                s.history.append({k: v for k, v in event.items() if k != "stage"})
            elif "total" in event:
                s.message = f"{event['stage']}: {event['done']}/{event['total']}"
            elif "message" in event:
                s.message = event["message"]

    def _run(self, request: FinetuneRequest) -> None:
        try:
            result = finetune(request, self._progress, self._stop.is_set)
            metrics = result.record["metrics"]
            with self._lock:
                s = self._status
                s.report = result.report
                s.state = "stopped" if result.stopped_by == "stop" else "done"
                s.progress = 1.0 if s.state == "done" else s.progress
                s.message = (
                    f"{'stopped early; ' if s.state == 'stopped' else ''}saved checkpoint {request.out.name!r} "
                    f"(best epoch {result.record['best_epoch']}, "
                    f"validation accuracy {metrics.get('val_accuracy', float('nan')):.3f})"
                )
        except Exception as e:  # the job fails, the server keeps serving
            traceback.print_exc()
            with self._lock:
                self._status.state = "failed"
                self._status.message = f"training failed: {e}"
        finally:
            with self._lock:
                self._status.finished = time.time()
