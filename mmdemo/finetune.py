"""The one fine-tune path: data -> settings -> training -> checkpoint with its record and card.

``python -m mmdemo train`` and the app's fine-tune jobs both call ``finetune()``, so the two
cannot drift apart: the same training, the same stopping rules, the same training record.
A checkpoint is saved only after at least one training step; while training runs, every new
best epoch is saved atomically, so a run that is stopped keeps its best epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .checkpoint import load_checkpoint, save_checkpoint
from .data import Dataset, check_trainable
from .model import ModelConfig
from .scope import fit_and_save
from .train import Progress, TrainSettings, train


@dataclass
class FinetuneRequest:
    dataset: Dataset
    out: Path  # the new checkpoint folder
    settings: TrainSettings
    val_dataset: Dataset | None = None  # default: hold out val_fraction of the images
    val_fraction: float = 0.1
    init: Path | None = None  # checkpoint folder to start from (default: a new model)
    config: ModelConfig | None = None  # architecture of a new model (ignored with init)
    time_limit_s: float | None = None  # stop after this long; the best epoch so far is kept
    overwrite: bool = False
    description: str = ""  # first line of the model card
    command: str | None = None  # the command line that ran it (CLI)


@dataclass
class FinetuneResult:
    checkpoint: Path
    record: dict  # the ``training`` record saved in config.json
    report: dict  # the best epoch's validation report (per class, confusion)
    stopped_by: str | None  # None (ran to the end), "time limit" or "stop"


def finetune(
    request: FinetuneRequest,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FinetuneResult:
    """Train as ``request`` says and save the checkpoint; ValueError for data that cannot train,
    RuntimeError when it stopped before the first training step (nothing is saved then)."""
    out = Path(request.out)
    if out.exists() and not request.overwrite:
        raise ValueError(f"{out.name} already exists; choose another name or allow overwriting")
    check_trainable(request.dataset)
    init = load_checkpoint(request.init) if request.init else None
    started = time.monotonic()
    deadline = started + request.time_limit_s if request.time_limit_s else None
    user_stop = should_stop or (lambda: False)
    stopped: list[str] = []

    def stop() -> bool:
        if user_stop():
            stopped[:] = ["stop"]
        elif deadline is not None and time.monotonic() > deadline:
            stopped[:] = ["time limit"]
        return bool(stopped)

    history: list[dict] = []

    def on_progress(event: dict) -> None:
        if event["stage"] == "epoch":
            history.append({k: v for k, v in event.items() if k != "stage"})
        if progress is not None:
            progress(event)

    def on_best(model, best: dict) -> None:
        record = training_record(request, best, list(history) + [best], time.monotonic() - started, None)
        save_checkpoint(model, out, training=record, overwrite=True)

    result = train(
        request.dataset,
        request.val_dataset,
        request.settings,
        init=init,
        config=request.config,
        progress=on_progress,
        should_stop=stop,
        val_fraction=request.val_fraction,
        on_best=on_best,
    )
    if not result.history:
        raise RuntimeError(
            f"stopped ({stopped[0] if stopped else 'no data'}) before the first training step; nothing was saved"
        )
    stopped_by = stopped[0] if stopped else None
    best = {k: v for k, v in result.best_metrics.items() if k != "report"}
    record = training_record(request, best, result.history, result.seconds, stopped_by)
    save_checkpoint(result.model, out, training=record, overwrite=True)
    # out-of-scope statistics of this run's data, beside the weights (scope.py)
    fit_and_save(out, result.model, request.dataset, request.val_dataset, request.val_fraction, request.settings.seed,
                 request.settings.device)  # fmt: skip
    return FinetuneResult(out, record, result.best_metrics.get("report", {}), stopped_by)


def training_record(
    request: FinetuneRequest, best: dict, history: list[dict], seconds: float, stopped_by: str | None
) -> dict:
    """What config.json and the model card say about how a checkpoint was trained."""
    dataset = request.dataset
    if request.val_dataset is not None:
        validation = f"validation {request.val_dataset.csv_path.name}: {len(request.val_dataset.examples)} rows"
    else:
        validation = f"{request.val_fraction:.0%} of the images held out for validation"
    record = {
        "description": request.description or f"Fine-tuned with mmdemo on {dataset.csv_path.name}.",
        "data": f"{dataset.csv_path.name}: {len(dataset.examples)} rows; {validation}",
        "init": request.init.name if request.init else "new model (pretrained encoders from their packages)",
        "settings": {k: v for k, v in asdict(request.settings).items()},
        "frozen": ", ".join(request.settings.freeze) or "nothing",
        "best_epoch": best["epoch"],
        "train_seconds": round(seconds, 1),
        "stopped_by": stopped_by or "ran to the end",
        "metrics": {k: v for k, v in best.items() if k != "complete"},
        "history": history,
    }
    if not best.get("complete", True):
        record["best_epoch_note"] = f"the best epoch ({best['epoch']}) was cut short by the {stopped_by or 'stop'}"
    if request.command:
        record = {"command": request.command, **record}
    return record
