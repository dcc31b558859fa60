"""Fine-tune jobs for the app: one background job at a time.

Training runs in a worker thread so the server keeps answering; the job's status is held here,
not in the browser, so it survives a page reload.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field

from .checkpoint import load_checkpoint, save_checkpoint
from .data import Dataset, check_trainable
from .registry import CheckpointRegistry, validate_name
from .train import TrainSettings, train


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
        init = load_checkpoint(self.registry.path(base)) if base else None
        with self._lock:
            if self.running():
                raise ValueError("a fine-tune job is already running; wait for it or stop it first")
            self._stop.clear()
            self._status = JobStatus(
                state="running", message="starting", epochs=settings.epochs, started=time.time(), checkpoint=name
            )
            self._thread = threading.Thread(
                target=self._run, args=(dataset, settings, init, target, overwrite, val_fraction, base), daemon=True
            )
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

    def _run(self, dataset, settings, init, target, overwrite, val_fraction, base) -> None:
        try:
            result = train(
                dataset,
                None,
                settings,
                init=init,
                progress=self._progress,
                should_stop=self._stop.is_set,
                val_fraction=val_fraction,
            )
            if not result.history:
                raise RuntimeError("stopped before the first epoch finished; nothing was saved")
            metrics = {k: v for k, v in result.best_metrics.items() if k not in ("report", "stage")}
            training = {
                "description": f"Fine-tuned in the mmdemo app on {dataset.csv_path.name}.",
                "data": f"{dataset.csv_path.name}: {len(dataset.examples)} rows, {val_fraction:.0%} of the images held out for validation",
                "init": base or "new model (pretrained encoders from their packages)",
                "settings": {k: v for k, v in vars(settings).items()},
                "best_epoch": result.best_epoch,
                "train_seconds": round(result.seconds, 1),
                "metrics": metrics,
                "history": result.history,
            }
            save_checkpoint(result.model, target, training=training, overwrite=overwrite)
            with self._lock:
                s = self._status
                s.report = result.best_metrics.get("report", {})
                s.state = "stopped" if self._stop.is_set() else "done"
                s.progress = 1.0 if s.state == "done" else s.progress
                s.message = (
                    f"{'stopped early; ' if s.state == 'stopped' else ''}saved checkpoint {target.name!r} "
                    f"(best epoch {result.best_epoch}, validation accuracy {metrics.get('val_accuracy', float('nan')):.3f})"
                )
        except Exception as e:  # the job fails, the server keeps serving
            traceback.print_exc()
            with self._lock:
                self._status.state = "failed"
                self._status.message = f"training failed: {e}"
        finally:
            with self._lock:
                self._status.finished = time.time()
