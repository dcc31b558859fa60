"""Fine-tune jobs for the app: safe uploads, a checkpoint registry, one background job at a time.

- Uploads: a zip of images is extracted only if every entry is a plain file with a relative
  path inside the folder, the entry count and total size are under caps; CSV image paths are
  confined to the extraction folder (data.read_csv(confine=True)).
- Checkpoints: the shipped ones (read-only) plus a writable folder ($MMDEMO_CHECKPOINT_DIR,
  default checkpoints/) where fine-tuned ones are saved under a validated name.
- Jobs: training runs in a worker thread so the server keeps answering; the job's status is
  held here, not in the browser, so it survives a page reload.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import threading
import time
import traceback
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import is_checkpoint, load_checkpoint, save_checkpoint
from .data import Dataset, check_trainable
from .service import Predictor
from .train import TrainSettings, train

REPO_CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_ZIP_ENTRIES = 20_000
MAX_ZIP_BYTES = 2 * 1024**3


def extract_zip(
    zip_path: str | os.PathLike,
    dest: str | os.PathLike,
    max_entries: int = MAX_ZIP_ENTRIES,
    max_bytes: int = MAX_ZIP_BYTES,
) -> Path:
    """Extract an uploaded zip safely into ``dest``; ValueError names the entry or limit broken."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise ValueError("the images upload is not a valid zip file") from None
    with archive:
        entries = archive.infolist()
        if len(entries) > max_entries:
            raise ValueError(f"the zip has {len(entries):,} entries, over the limit of {max_entries:,}")
        total = sum(e.file_size for e in entries)
        if total > max_bytes:
            raise ValueError(f"the zip expands to {total / 1e6:,.0f} MB, over the limit of {max_bytes / 1e6:,.0f} MB")
        for e in entries:
            name = e.filename
            if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in Path(name).parts:
                raise ValueError(f"zip entry {name!r} has an absolute or '..' path")
            if stat.S_ISLNK(e.external_attr >> 16):
                raise ValueError(f"zip entry {name!r} is a link; only plain files are accepted")
            if not (root / name).resolve().is_relative_to(root):
                raise ValueError(f"zip entry {name!r} leaves the upload folder")
        for e in entries:
            if e.is_dir():
                continue
            target = root / e.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(e) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return root


def validate_name(name: str) -> str:
    name = (name or "").strip()
    if not NAME_PATTERN.match(name):
        raise ValueError(
            f"checkpoint name {name!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


class CheckpointRegistry:
    """Checkpoint folders by name: the shipped ones and the writable folder's, newest state on
    every call (a fine-tuned checkpoint shows up as soon as it is saved)."""

    def __init__(
        self,
        writable_dir: str | os.PathLike | None = None,
        shipped_dir: str | os.PathLike = REPO_CHECKPOINTS,
        device: str | None = None,
        cache_size: int = 3,
    ):
        self.writable_dir = Path(writable_dir or os.environ.get("MMDEMO_CHECKPOINT_DIR") or REPO_CHECKPOINTS)
        self.shipped_dir = Path(shipped_dir)
        self.device = device
        self._predictors: OrderedDict[tuple[str, float], Predictor] = OrderedDict()
        self._lock = threading.Lock()
        self.cache_size = cache_size

    def paths(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for folder in (self.shipped_dir, self.writable_dir):
            if folder.is_dir():
                for path in sorted(folder.iterdir()):
                    if path.is_dir() and not path.name.startswith(".") and is_checkpoint(path):
                        found.setdefault(path.name, path)
        return found

    def names(self) -> list[str]:
        return list(self.paths())

    def path(self, name: str) -> Path:
        paths = self.paths()
        if name not in paths:
            raise ValueError(f"unknown checkpoint {name!r}; available: {', '.join(paths) or 'none'}")
        return paths[name]

    def predictor(self, name: str) -> Predictor:
        """A predictor per checkpoint, cached (keyed by the weights' mtime, so a replaced
        checkpoint is reloaded)."""
        path = self.path(name)
        key = (str(path), (path / "model.safetensors").stat().st_mtime)
        with self._lock:
            if key in self._predictors:
                self._predictors.move_to_end(key)
                return self._predictors[key]
            predictor = Predictor.from_checkpoint(path, self.device)
            self._predictors[key] = predictor
            while len(self._predictors) > self.cache_size:
                self._predictors.popitem(last=False)
            return predictor

    def zip(self, name: str, out_dir: str | os.PathLike) -> Path:
        """The checkpoint folder as a zip (for download)."""
        path = self.path(name)
        base = Path(out_dir) / name
        return Path(shutil.make_archive(str(base), "zip", root_dir=path.parent, base_dir=path.name))


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
