"""The one fine-tune path: data -> settings -> training -> calibration -> checkpoint with its
record and card.

``python -m mmdemo train`` and the app's fine-tune jobs both call ``finetune()``, so the two
cannot drift apart: the same recipe, the same training, the same stopping rules, the same
training record. A checkpoint is saved only after at least one training step; while training
runs, every new best epoch is saved atomically, so a run that is stopped keeps its best epoch.

Settings: a request with ``settings=None`` gets the adaptive recipe (recipe.py) for its data
and time budget, with ``overrides`` (explicit flags) winning over each choice.

Resume: after every complete epoch the run's state (weights, optimizer, scheduler, random
generators, best epoch, the data rows and the request) is written to a hidden sibling folder
``.<name>.resume`` as safetensors + JSON, outside the checkpoint a user downloads.
``resume(out)`` continues such a run from its last complete epoch, to the same weights an
uninterrupted run reaches; it is deleted when a run ends without being stopped.

Under ``torchrun`` (distributed.py) every process runs ``finetune()``: they train together,
and rank 0 alone saves the checkpoints and resume state, fits the temperature and the
out-of-scope statistics; the record says ``world_size`` and ``optimizer_steps``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..datasets.csv_table import Dataset, Example, check_trainable
from ..datasets.splits import make_split
from ..device import env_rank, env_world_size, resolve_device
from ..folders import new_folder, replace_folder
from ..metrics import classification_report, expected_calibration_error
from ..model.checkpoint import load_checkpoint, read_config, save_checkpoint
from ..model.classifier import ModelConfig, MultimodalClassifier
from . import recipe as recipes
from .calibration import calibration_report, fit_temperature
from .features import Encoded
from .loop import train
from .scope_fit import fit_and_save
from .scoring import predict_encoded
from .settings import Progress, TrainSettings, TrainState


@dataclass
class FinetuneRequest:
    dataset: Dataset
    out: Path  # the new checkpoint folder
    settings: TrainSettings | None = None  # None: the recipe chooses (with ``overrides``)
    val_dataset: Dataset | None = None  # default: hold out val_fraction of the images
    val_fraction: float = 0.1
    init: Path | None = None  # checkpoint folder to start from (default: a new model)
    config: ModelConfig | None = None  # architecture of a new model (ignored with init)
    time_limit_s: float | None = None  # stop after this long (recipe: default its budget)
    overwrite: bool = False
    description: str = ""  # first line of the model card
    command: str | None = None  # the command line that ran it (CLI)
    overrides: dict = field(default_factory=dict)  # explicit settings / architecture for the recipe
    calibrate: bool = True  # fit a temperature on the validation split
    review: dict | None = None  # audit/review.py review_record: the rows excluded or relabelled (applied already)


@dataclass
class FinetuneResult:
    checkpoint: Path
    record: dict  # the ``training`` record saved in config.json
    report: dict  # the best epoch's validation report (per class, confusion)
    stopped_by: str | None  # None (ran to the end), "time limit", "stop" or "early stopping"


RESUME_SUFFIX, RESUME_STATE_FILE = ".resume", "state.json"


def resume_dir(out: Path) -> Path:
    """Where a run's resume state lives: a hidden sibling of its checkpoint folder, so an
    overwrite of the checkpoint (a new best epoch) neither drops nor carries it."""
    out = Path(out)
    return out.parent / f".{out.name}{RESUME_SUFFIX}"


def is_resume_state(folder: Path) -> bool:
    """Whether a resume folder is whole: its JSON is written last, after the tensors."""
    return (Path(folder) / RESUME_STATE_FILE).is_file()


def plan(request: FinetuneRequest) -> recipes.Recipe:
    """The settings a request will train with, why each was chosen, and a time estimate (the app
    shows ``plan(request).describe()`` before starting)."""
    init_config = read_config(request.init) if request.init else None
    data = recipes.profile(request.dataset)
    if request.settings is not None:
        config = request.config or ModelConfig(labels=request.dataset.labels)
        cfg = init_config or config
        regions = recipes.regions_for(cfg.image_size, cfg.image_stride, cfg.region_pool)
        speed = recipes.machine_speed(request.settings.cpu_threads)
        estimate = recipes.estimate_seconds(
            data, cfg.image_size, regions, request.settings.epochs, request.settings.freeze, speed
        )
        choices = {"settings": {"value": "explicit", "why": "given by the caller"}}
        return recipes.Recipe(request.settings, {}, choices, estimate)
    overrides = dict(request.overrides)
    if request.config is not None and init_config is None:  # an explicit architecture
        defaults = ModelConfig(labels=request.config.labels)
        overrides.update(
            {k: v for k, v in asdict(request.config).items() if k != "labels" and v != getattr(defaults, k)}
        )
    return recipes.choose(data, request.time_limit_s, overrides, init_config)


def finetune(
    request: FinetuneRequest,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    _resume: TrainState | None = None,
    _recipe: recipes.Recipe | None = None,
) -> FinetuneResult:
    """Train as ``request`` says and save the checkpoint; ValueError for data that cannot train,
    RuntimeError when it stopped before the first training step (nothing is saved then)."""
    out = Path(request.out)
    if out.exists() and not request.overwrite and _resume is None:
        raise ValueError(f"{out.name} already exists; choose another name or allow overwriting")
    check_trainable(request.dataset)
    progress = progress or (lambda event: None)
    if request.init:
        progress({"stage": "prepare", "message": f"loading the model {request.init.name!r}"})
    init = load_checkpoint(request.init) if request.init else None
    if _recipe is None:
        progress({"stage": "prepare", "message": "choosing the settings (timing this machine)"})
    recipe = _recipe or plan(request)
    config = _new_model_config(request, recipe)
    time_limit = request.time_limit_s
    if time_limit is None and request.settings is None:
        time_limit = recipes.DEFAULT_BUDGET_S
    progress({"stage": "plan", "message": recipe.describe(), "estimate_s": recipe.estimate_s})
    made = make_split(request.dataset, request.val_dataset, request.val_fraction, recipe.settings.seed)
    split = made.record()
    progress({"stage": "split", "message": split["description"]})

    started = time.monotonic()
    stopped: list[str] = []
    deadline = started + time_limit if time_limit else None
    stop = _stop_rule(should_stop, deadline, stopped)
    history: list[dict] = []

    def on_progress(event: dict) -> None:
        if event["stage"] == "epoch":
            history.append({k: v for k, v in event.items() if k != "stage"})
        progress(event)

    def on_best(model, best: dict) -> None:
        record = training_record(request, recipe, best, list(history) + [best], time.monotonic() - started, None, split)
        save_checkpoint(model, out, training=record, overwrite=True)

    def on_epoch(state: TrainState) -> None:
        save_resume_state(resume_dir(out), request, recipe, state)

    result = train(
        request.dataset,
        request.val_dataset,
        recipe.settings,
        init=init,
        config=config,
        progress=on_progress,
        should_stop=stop,
        val_fraction=request.val_fraction,
        on_best=on_best,
        on_epoch=on_epoch,
        resume=_resume,
        time_left=(lambda: deadline - time.monotonic()) if deadline else None,
    )
    if not result.history:
        raise RuntimeError(
            f"stopped ({stopped[0] if stopped else 'no data'}) before the first training step; nothing was saved"
        )
    stopped_by = stopped[0] if stopped else ("early stopping" if result.stopped_early else None)
    best = {k: v for k, v in result.best_metrics.items() if k != "report"}
    record = training_record(request, recipe, best, result.history, time.monotonic() - started, stopped_by, split)
    if env_rank() != 0:  # under torchrun rank 0 alone calibrates and writes (same weights)
        return FinetuneResult(out, record, result.best_metrics.get("report", {}), stopped_by)
    record["baselines"] = result.baselines
    record["stages"] = result.stages
    if request.calibrate and result.val_logits is not None:
        temperature = fit_temperature(result.val_logits, result.val_targets)
        result.model.config.temperature = temperature
        record["calibration"] = calibration_report(result.val_logits, result.val_targets, temperature)
    if result.task_val:
        record["tasks"] = task_records(result, request.dataset, request.calibrate)
    if init is not None and result.val_logits is not None and made.val:
        progress({"stage": "compare", "message": f"scoring {request.init.name!r} on the validation rows"})
        record["start_comparison"] = start_comparison(
            init,
            request.init.name,
            made.val,
            (result.val_logits, result.val_targets),
            result.model.config.temperature,
            recipe.settings.device,
        )
    # the one place the final model is saved, with the out-of-scope statistics of this run's data
    save_checkpoint(result.model, out, training=record, overwrite=True)
    fit_and_save(
        out,
        result.model,
        request.dataset,
        request.val_dataset,
        request.val_fraction,
        recipe.settings.seed,
        recipe.settings.device,
    )
    from .similar_fit import save_training_index  # the similar-examples index: this run's training rows only

    save_training_index(out, result.model, made.train, request.dataset.csv_path, recipe.settings.device)
    if stopped_by not in ("stop", "time limit"):
        shutil.rmtree(resume_dir(out), ignore_errors=True)
    return FinetuneResult(out, record, result.best_metrics.get("report", {}), stopped_by)


def task_records(result, dataset: Dataset, calibrate: bool) -> dict:
    """Each task's part of the training record: its labels, validation figures (accuracy, macro
    F1, per class), baselines, the rows without a label for it, and its calibration, whose
    temperature is set on the model (the first task's is ``config.temperature``)."""
    config = result.model.config
    history_tasks = result.best_metrics.get("tasks", {})
    records = {}
    for t, (name, labels) in enumerate(zip(config.task_names(), config.task_labels())):
        logits, targets = result.task_val[t]
        known = targets >= 0
        truth = [labels[j] for j in targets[known].tolist()]
        predicted = [labels[j] for j in logits[known].argmax(-1).tolist()]
        task = {
            "labels": list(labels),
            "rows_without_label": dataset.empty_labels.get(name, 0),
            "metrics": {**history_tasks.get(name, {}), "report": classification_report(truth, predicted, list(labels))},
            "baselines": result.task_baselines[t] if t < len(result.task_baselines) else {},
        }
        if calibrate and known.any():
            temperature = fit_temperature(logits, targets) if t else config.temperature
            config.set_task_temperature(t, temperature)
            task["calibration"] = calibration_report(logits, targets, temperature)
        records[name] = task
    return records


def _accuracy_and_ece(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> tuple[float, float]:
    """Accuracy over every row (a row whose label the model lacks, target -1, is wrong) and the
    expected calibration error of the probabilities as served (softmax of logits / temperature)."""
    confidence, predicted = (logits.float() / temperature).softmax(-1).max(-1)
    correct = (predicted == targets).tolist()
    return sum(correct) / max(1, len(correct)), expected_calibration_error(confidence.tolist(), correct)


def start_comparison(
    init: MultimodalClassifier,
    name: str,
    val_examples: list[Example],
    new: tuple[torch.Tensor, torch.Tensor],
    new_temperature: float,
    device: str | None = None,
) -> dict:
    """The starting checkpoint ``init`` scored on the new model's validation rows, beside the new
    model (``new``: its validation logits and targets, in the same row order): accuracy and ECE of
    each, and whether the new model is worse. A row whose label ``init`` does not have counts as
    wrong for it. ``summary`` says it in a sentence (the model card, the app, the CLI)."""
    run_on = resolve_device(device)
    init = init.to(run_on).eval()
    encoded = Encoded(init, val_examples, run_on, lambda event: None)
    index = {label: i for i, label in enumerate(init.config.labels)}
    targets = torch.tensor([index.get(e.label, -1) for e in val_examples])
    with torch.no_grad():
        logits = predict_encoded(init, encoded, run_on)
    init.cpu()
    accuracy, ece = _accuracy_and_ece(logits, targets, init.config.temperature)
    new_accuracy, new_ece = _accuracy_and_ece(*new, new_temperature)
    unknown = int((targets < 0).sum())
    comparison = {
        "checkpoint": name,
        "rows": len(val_examples),
        "accuracy": round(accuracy, 4),
        "ece": round(ece, 4),
        "new_accuracy": round(new_accuracy, 4),
        "new_ece": round(new_ece, 4),
        "unknown_label_rows": unknown,
        "worse": new_accuracy < accuracy,
    }
    comparison["summary"] = comparison_words(comparison)
    return comparison


def comparison_words(c: dict) -> str:
    """A start comparison (``start_comparison``) in one or two sentences; accuracies with two
    decimals, or three where two would print a difference as equal figures."""
    digits = 2 if f"{c['new_accuracy']:.2f}" != f"{c['accuracy']:.2f}" or c["new_accuracy"] == c["accuracy"] else 3
    figures = (
        f"validation accuracy {c['new_accuracy']:.{digits}f} against {c['accuracy']:.{digits}f} for {c['checkpoint']!r}"
        f" on the same {c['rows']:,} validation rows"
    )
    if c["unknown_label_rows"]:
        figures += f" ({c['unknown_label_rows']:,} of them have labels {c['checkpoint']!r} does not know: wrong for it)"
    calibration = f" Calibration error (ECE) {c['new_ece']:.2f} against {c['ece']:.2f}."
    if c["worse"]:
        return (
            f"The new model is worse than the one it started from: {figures}. Keep using {c['checkpoint']!r}, or"
            " train again with more data, more epochs or a lower learning rate." + calibration
        )
    return f"The new model is at least as good as the one it started from: {figures}." + calibration


def _new_model_config(request: FinetuneRequest, recipe: recipes.Recipe) -> ModelConfig | None:
    if request.init:
        return None
    base = asdict(request.config) if request.config else {"labels": request.dataset.labels}
    return ModelConfig(**{**base, **recipe.config})


def _stop_rule(should_stop, deadline: float | None, stopped: list[str]) -> Callable[[], bool]:
    user_stop = should_stop or (lambda: False)

    def stop() -> bool:
        if user_stop():
            stopped[:] = ["stop"]
        elif deadline is not None and time.monotonic() > deadline:
            stopped[:] = ["time limit"]
        return bool(stopped)

    return stop


def training_record(
    request: FinetuneRequest,
    recipe: recipes.Recipe,
    best: dict,
    history: list[dict],
    seconds: float,
    stopped_by: str | None,
    split: dict | None = None,
) -> dict:
    """What config.json and the model card say about how a checkpoint was trained; ``split``:
    ``splits.Split.record()`` of the run's validation split."""
    dataset = request.dataset
    if request.val_dataset is not None:
        validation = f"validation {request.val_dataset.csv_path.name}: {len(request.val_dataset.examples)} rows"
    elif split is not None:
        validation = f"{request.val_fraction:.0%} held out for " + split["description"]
    else:
        validation = f"{request.val_fraction:.0%} of the images held out for validation"
    settings = recipe.settings
    world = env_world_size()
    reviewed = f"; {request.review['summary']}" if request.review else ""
    record = {
        "description": request.description or f"Fine-tuned with mmdemo on {dataset.csv_path.name}.",
        "data": f"{dataset.csv_path.name}: {len(dataset.examples)} rows{reviewed}; {validation}",
        "init": request.init.name if request.init else "new model (pretrained encoders from their packages)",
        "settings": {k: v for k, v in asdict(settings).items()},
        "recipe": recipe.choices,
        "split": split or {},
        "estimated_seconds": round(recipe.estimate_s, 1),
        "frozen": ", ".join(settings.freeze) or "nothing",
        "best_epoch": best["epoch"],
        "train_seconds": round(seconds, 1),
        "stopped_by": stopped_by or "ran to the end",
        "throughput": throughput(history),
        # processes that trained together (torchrun); each step took batch_size rows on each
        "world_size": world,
        "global_batch_size": settings.batch_size * world,
        "optimizer_steps": sum(h.get("optimizer_steps", 0) for h in history),
        "optimizer_steps_per_epoch": max((h.get("optimizer_steps", 0) for h in history), default=0),
        "metrics": {k: v for k, v in best.items() if k not in ("complete", "samples_per_s", "optimizer_steps")},
        "history": history,
    }
    if not best.get("complete", True):
        record["best_epoch_note"] = f"the best epoch ({best['epoch']}) was cut short by the {stopped_by or 'stop'}"
    if request.review:
        record["review"] = request.review
    if request.command:  # a command line's run: where its CSV is (add-classes replays its rows)
        record = {"command": request.command, "csv": str(Path(request.dataset.csv_path).resolve()), **record}
    return record


def throughput(history: list[dict]) -> dict:
    """Training samples per second: the first epoch, and the median of the later ones (the first
    may include warm-up; with frozen encoders all of them read cached features)."""
    rates = [h["samples_per_s"] for h in history if "samples_per_s" in h]
    if not rates:
        return {}
    later = sorted(rates[1:])
    return {  # samples of all processes together under torchrun
        "first_epoch_samples_per_s": rates[0],
        "later_epochs_samples_per_s": later[len(later) // 2] if later else None,
    }


# --- resume state: safetensors for tensors, JSON for everything else, never pickle ---------------


def save_resume_state(folder: Path, request: FinetuneRequest, recipe: recipes.Recipe, state: TrainState) -> None:
    tensors = {f"model.{k}": v.contiguous() for k, v in state.model.items()}
    tensors |= {f"best_model.{k}": v.contiguous() for k, v in state.best_model.items()}
    tensors |= {f"contrastive.{k}": v.contiguous() for k, v in state.contrastive.items()}
    tensors |= {"generator": state.generator, "torch_rng": state.torch_rng}
    opt_state = {}
    for index, entries in state.optimizer["state"].items():
        for key, value in entries.items():
            tensors[f"optimizer.{index}.{key}"] = value.contiguous()
            opt_state.setdefault(str(index), []).append(key)
    meta = {
        "epoch": state.epoch,
        "best": state.best,
        "history": state.history,
        "stale_epochs": state.stale_epochs,
        "stage": state.stage,
        "stage2": state.stage2,
        "world_size": state.world_size,
        "optimizer_param_groups": state.optimizer["param_groups"],
        "optimizer_state_keys": opt_state,
        "scheduler": state.scheduler,
        "request": _request_to_json(request),
        "recipe": {"settings": asdict(recipe.settings), "config": recipe.config, "choices": recipe.choices,
                   "estimate_s": recipe.estimate_s},
    }  # fmt: skip
    tmp = new_folder(folder)
    try:
        save_file(tensors, tmp / "state.safetensors")
        (tmp / RESUME_STATE_FILE).write_text(json.dumps(meta, default=_jsonable))
        replace_folder(tmp, folder)  # a kill mid-save keeps the previous epoch's state
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_resume_state(folder: Path) -> tuple[FinetuneRequest, recipes.Recipe, TrainState]:
    folder = Path(folder)
    if not is_resume_state(folder):
        raise ValueError(f"nothing to resume: {folder} holds no saved training state")
    meta = json.loads((folder / RESUME_STATE_FILE).read_text())
    tensors = load_file(folder / "state.safetensors")
    prefixed = lambda p: {k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)}  # noqa: E731
    optimizer = {
        "state": {int(i): {k: tensors[f"optimizer.{i}.{k}"] for k in keys} for i, keys in meta["optimizer_state_keys"].items()},
        "param_groups": meta["optimizer_param_groups"],
    }  # fmt: skip
    state = TrainState(
        epoch=meta["epoch"],
        model=prefixed("model."),
        optimizer=optimizer,
        scheduler=meta["scheduler"],
        generator=tensors["generator"],
        torch_rng=tensors["torch_rng"],
        best=meta["best"],
        best_model=prefixed("best_model."),
        history=meta["history"],
        stale_epochs=meta["stale_epochs"],
        stage=meta.get("stage", 1),
        stage2=meta.get("stage2"),
        world_size=meta.get("world_size", 1),
        contrastive=prefixed("contrastive."),
    )
    r = meta["recipe"]
    recipe = recipes.Recipe(TrainSettings(**r["settings"]), r["config"], r["choices"], r["estimate_s"])
    return _request_from_json(meta["request"]), recipe, state


def resume(
    out: Path,
    time_limit_s: float | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FinetuneResult:
    """Continue the run that was saving to checkpoint folder ``out`` from its last complete
    epoch (after Ctrl-C, a server restart or its time limit); ``time_limit_s`` is the time this
    continuation may take (default: the original request's limit)."""
    request, recipe, state = load_resume_state(resume_dir(out))
    request.out, request.overwrite = Path(out), True
    if time_limit_s is not None:
        request.time_limit_s = time_limit_s
    return finetune(request, progress, should_stop, _resume=state, _recipe=recipe)


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, tuple | set):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot save {type(value).__name__} in a resume state")


def _dataset_to_json(dataset: Dataset | None) -> dict | None:
    if dataset is None:
        return None
    return {
        "csv_path": str(dataset.csv_path),
        "examples": [[e.row, str(e.image), e.text, e.label, e.group, e.labels] for e in dataset.examples],
        "tasks": dataset.tasks,
    }


def _dataset_from_json(data: dict | None) -> Dataset | None:
    if data is None:
        return None
    examples = [Example(row, Path(image), *rest) for row, image, *rest in data["examples"]]
    counts: dict[str, int] = {}
    for e in examples:
        if e.label:
            counts[e.label] = counts.get(e.label, 0) + 1
    dataset = Dataset(Path(data["csv_path"]), examples, [], sorted(counts), dict(sorted(counts.items())))
    dataset.tasks = data.get("tasks", [])
    for task in dataset.tasks:
        values = [e.labels.get(task, "") for e in examples]
        dataset.task_counts[task] = {v: values.count(v) for v in sorted(set(values) - {""})}
        dataset.empty_labels[task] = values.count("")
    return dataset


def _request_to_json(request: FinetuneRequest) -> dict:
    return {
        "dataset": _dataset_to_json(request.dataset),
        "val_dataset": _dataset_to_json(request.val_dataset),
        "out": str(request.out),
        "settings": asdict(request.settings) if request.settings else None,
        "val_fraction": request.val_fraction,
        "init": str(request.init) if request.init else None,
        "config": asdict(request.config) if request.config else None,
        "time_limit_s": request.time_limit_s,
        "description": request.description,
        "command": request.command,
        "overrides": request.overrides,
        "calibrate": request.calibrate,
        "review": request.review,
    }


def _request_from_json(data: dict) -> FinetuneRequest:
    return FinetuneRequest(
        dataset=_dataset_from_json(data["dataset"]),
        out=Path(data["out"]),
        settings=TrainSettings(**data["settings"]) if data["settings"] else None,
        val_dataset=_dataset_from_json(data["val_dataset"]),
        val_fraction=data["val_fraction"],
        init=Path(data["init"]) if data["init"] else None,
        config=ModelConfig(**data["config"]) if data["config"] else None,
        time_limit_s=data["time_limit_s"],
        description=data["description"],
        command=data["command"],
        overrides=data["overrides"],
        calibrate=data["calibrate"],
        review=data.get("review"),
    )
