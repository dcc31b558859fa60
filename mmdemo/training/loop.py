"""The training engine shared by the CLI and the app's fine-tune tab: ``train()``.

One plain loop: AdamW, linear warm-up then cosine decay, cross-entropy (optionally class
weighted), gradient clipping, modality dropout, evaluation after every epoch, the best
epoch on validation kept. Progress goes through a callback (tqdm in the CLI, gr.Progress in
the UI), so this module imports no UI.

Its parts live beside it: the settings and result (settings.py), the feature cache that
encodes each input once (features.py), augmentation and modality dropout (augment.py), the
two-stage plan (stage2.py), validation logits and baselines (scoring.py), and the split of
the rows by image (datasets/splits.py).

Under ``torchrun`` the same loop runs data-parallel (distributed.py): each process takes its
share of every global batch (``world_size`` x ``batch_size`` rows) and DDP averages the
gradients, so an epoch takes ``1 / world_size`` of the optimizer steps; the encoder cache is
built in shares and gathered; stop decisions come from rank 0; only rank 0 writes.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from ..datasets.csv_table import Dataset
from ..datasets.splits import train_val_split
from ..device import autocast, resolve_device
from ..metrics import classification_report
from ..model.classifier import PARTS, ModelConfig, MultimodalClassifier, build_model, make_head
from . import distributed
from .augment import modality_dropout
from .contrastive import ContrastiveLoss
from .features import Encoded
from .scoring import modality_baselines, predict_encoded
from .settings import Progress, TrainResult, TrainSettings, TrainState
from .stage2 import agree_plan, plan_stage2, stage_summaries


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_for(
    labels: list[str],
    init: MultimodalClassifier | None,
    config: ModelConfig | None,
    tasks: list[tuple[str, list[str]]] | None = None,
) -> MultimodalClassifier:
    """The model to train: ``init`` (a loaded checkpoint) with its head resized when the data
    has labels it does not know, or a new model from ``config``. ``tasks``: (name, labels) of
    each task when the data has several label columns (``labels`` is then the first's): one
    head per task; an ``init`` keeps the heads of the tasks it has by name."""
    extra = [{"name": name, "labels": list(task_labels), "temperature": 1.0} for name, task_labels in (tasks or [])[1:]]
    if init is None:
        config = copy.deepcopy(config) if config else ModelConfig(labels=list(labels))
        config.labels = list(labels)
        if tasks:
            config.task, config.extra_tasks = tasks[0][0], extra
        return build_model(config)
    model = copy.deepcopy(init)
    # what the checkpoint stored stays stored, even if this run freezes it (its weights are not
    # the package's any more)
    stored = {part for part in PARTS if part not in init.config.referenced_parts()}
    model.config.trained_parts = sorted(set(model.config.trained_parts) | stored)
    if set(labels) - set(model.config.labels):
        model.config.labels = list(labels)
        _resize(model.head, len(labels))
    if tasks:
        known = dict(zip(init.config.task_names()[1:], init.heads()[1:]))
        old = {t["name"]: t for t in init.config.extra_tasks}
        heads = []
        for task in extra:
            head = known.get(task["name"])
            if head is None:
                head = make_head(model.config, len(task["labels"]))
            elif set(task["labels"]) - set(old[task["name"]]["labels"]):
                _resize(head, len(task["labels"]))
            else:
                task["labels"] = list(old[task["name"]]["labels"])
            heads.append(head)
        model.config.task, model.config.extra_tasks = tasks[0][0], extra
        if hasattr(model, "extra_heads"):
            del model.extra_heads
        if heads:
            model.extra_heads = nn.ModuleList(heads)
    return model


def _resize(head: nn.Sequential, n_labels: int) -> None:
    """A new last layer for a head whose task has new labels."""
    last = head[-1]
    head[-1] = nn.Linear(last.in_features, n_labels)


def data_tasks(
    dataset: Dataset, val_dataset: Dataset | None, train_examples, val_examples
) -> list[tuple[str, list[str]]]:
    """(name, labels) of each task of the data: one per label column when it has several, else
    none (one task, the model's labels)."""
    if not dataset.tasks:
        return []
    if val_dataset is not None and val_dataset.tasks != dataset.tasks:
        raise ValueError(
            f"the validation data's label columns ({', '.join(val_dataset.task_names())}) are not the training"
            f" data's ({', '.join(dataset.tasks)})"
        )
    rows = list(train_examples) + list(val_examples)
    result = []
    for i, task in enumerate(dataset.tasks):
        labels = sorted({e.task_label(task, i == 0) for e in rows} - {""})
        if len(labels) < 2:
            raise ValueError(f"the label column {task!r} needs at least 2 classes, found {labels}")
        result.append((task, labels))
    return result


def task_targets(model: MultimodalClassifier, examples, tasks: list[str]) -> torch.Tensor:
    """(N, tasks) label index of each row for each of the model's tasks; -1 where the row has no
    label for the task, or one the model does not know."""
    columns = []
    names = model.config.task_names()
    for i, labels in enumerate(model.config.task_labels()):
        index = {label: j for j, label in enumerate(labels)}
        task = tasks[i] if i < len(tasks) else names[i]
        if i > 0 and i >= len(tasks):  # a task this data does not train
            columns.append(torch.full((len(examples),), -1))
            continue
        columns.append(torch.tensor([index.get(e.task_label(task, i == 0), -1) for e in examples], dtype=torch.long))
    return torch.stack(columns, 1)


def grouped_batches(rows_image: torch.Tensor, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Row batches in a random order that keeps the rows of one image together."""
    # shuffle the rows, then stable-sort them by a random rank of their image
    shuffled = torch.randperm(len(rows_image), generator=generator)
    rank = torch.randperm(int(rows_image.max()) + 1, generator=generator)
    order = shuffled[torch.argsort(rank[rows_image[shuffled]], stable=True)]
    return list(order.split(batch_size))


def train(
    dataset: Dataset,
    val_dataset: Dataset | None,
    settings: TrainSettings,
    init: MultimodalClassifier | None = None,
    config: ModelConfig | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    val_fraction: float = 0.1,
    on_best: Callable[[MultimodalClassifier, dict], None] | None = None,
    on_epoch: Callable[[TrainState], None] | None = None,
    resume: TrainState | None = None,
    time_left: Callable[[], float] | None = None,
) -> TrainResult:
    """Train on ``dataset``; validate on ``val_dataset`` or on a ``val_fraction`` split of it
    (split by image, so no image is in both). ``on_best(model, record)`` is called whenever an
    epoch beats the best so far (finetune saves a checkpoint there, so a stopped run keeps its
    best epoch); ``on_epoch(state)`` after every complete epoch with what ``resume`` takes to
    continue from there. ``time_left()``: seconds left in the run's budget (None: no limit),
    which decides whether stage 2 runs (``settings.stage2_blocks``)."""
    progress = progress or (lambda event: None)
    should_stop = should_stop or (lambda: False)
    start_time = time.perf_counter()
    seed_everything(settings.seed)
    ctx, device = distributed.setup(resolve_device(settings.device))
    threads = ctx.cpu_threads(settings.cpu_threads)
    if device.type == "cpu" and threads:
        torch.set_num_threads(threads)
    if not ctx.is_main:  # rank 0 reports (and, through the callbacks, writes)
        progress, on_best, on_epoch = (lambda event: None), None, None
    train_examples, val_examples = train_val_split(dataset, val_dataset, val_fraction, settings.seed)
    tasks = data_tasks(dataset, val_dataset, train_examples, val_examples)
    labels = tasks[0][1] if tasks else sorted({e.label for e in train_examples} | {e.label for e in val_examples})
    if len(labels) < 2:
        raise ValueError(f"training needs at least 2 classes, found {labels}")
    if settings.contrastive < 0:
        raise ValueError(f"the contrastive loss's weight must be 0 (off) or more, got {settings.contrastive}")

    model = model_for(labels, init, config, tasks)
    model.set_frozen(settings.freeze)
    trained = {part for part in PARTS if part not in settings.freeze}  # this run moves their weights
    model.config.trained_parts = sorted(set(model.config.trained_parts) | trained)
    model.to(device)
    # trained beside the model, never stored in its checkpoint
    contrastive = ContrastiveLoss(model.fusion.dim).to(device) if settings.contrastive else None
    progress({"stage": "prepare", "message": f"preparing {len(train_examples)} training rows"})
    encode_start = time.perf_counter()
    train_enc = Encoded(model, train_examples, device, progress, ctx, should_stop)
    encode_seconds = time.perf_counter() - encode_start
    val_enc = Encoded(model, val_examples, device, progress, ctx, should_stop) if val_examples else None
    copies = _stage1_copies(settings, encode_seconds, time_left, ctx, hasattr(model.image_encoder, "forward_below"))
    if copies["copies"] > 1:  # each copy through the frozen encoder once
        train_enc.cache_below(model, 0, settings, device, progress, None if ctx.distributed else should_stop)
    elif "why" in copies:
        progress({"stage": "prepare", "message": f"no augmented copies: {copies['why']}"})
    task_names = [name for name, _ in tasks]
    targets = task_targets(model, train_examples, task_names)  # (N, tasks)
    val_targets = task_targets(model, val_examples, task_names)
    prepare_seconds = time.perf_counter() - start_time

    weight = None
    if settings.class_weights:
        weight = [_class_weight(targets[:, t], len(ls), device) for t, ls in enumerate(model.config.task_labels())]
    loop = _Loop(model, train_enc, val_enc, targets, val_targets, weight, settings, device, progress, should_stop, ctx)
    loop.on_best, loop.on_epoch, loop.contrastive = on_best, on_epoch, contrastive
    steps = math.ceil(len(targets) / (settings.batch_size * ctx.world_size))  # per process, global batches
    if resume is not None:
        if resume.world_size != ctx.world_size:
            raise ValueError(
                f"this run was trained by {resume.world_size} process(es); resume it with as many"
                f" (torchrun --nproc_per_node), not {ctx.world_size}"
            )
        loop.restore(resume)
    base_tuned = model.config.image_tuned_blocks

    if loop.stage == 1:
        optimizer, scheduler, params = _optimizer(model, settings, steps, contrastive)
        first = 1
        if resume is not None:
            first = resume.epoch + 1
            _load_trained(model, resume.model)
            optimizer.load_state_dict(resume.optimizer)
            scheduler.load_state_dict(resume.scheduler)
        loop.run(first, settings.epochs, settings.patience, optimizer, scheduler, params)
        if settings.stage2_blocks:
            left = None if time_left is None else ctx.sum([time_left() if ctx.is_main else 0.0])[0]  # rank 0's clock
            plan = plan_stage2(
                settings, loop.history, stopped=loop.stopped, train_images=len(train_enc.pixels),
                val_images=len(val_enc.pixels) if val_enc is not None else 0, prepare_seconds=prepare_seconds,
                time_left=left,
            )  # fmt: skip
            loop.stage2 = agree_plan(ctx, plan)
            if loop.stage2["ran"]:
                loop.stage = 2
        if loop.stage == 1 and resume is None and time_left is not None:
            _extend_stage1(loop, model, optimizer, settings, steps, time_left, prepare_seconds, params, ctx)
    if loop.stage == 2:
        plan = loop.stage2
        setup_start = time.perf_counter()
        if resume is None or resume.stage == 1:  # start from stage 1's best epoch, which stays the one to beat
            _load_trained(model, loop.best_model)
            blocks = model.tune_image_blocks(plan["blocks"])
            loop.best_model, loop.stale = _trained_state(model, model.state_dict()), 0
        else:
            blocks = model.tune_image_blocks(plan["blocks"])
        train_enc.cache_below(model, plan["blocks"], settings, device, progress)
        if val_enc is not None:
            val_enc.cache_below(model, plan["blocks"], None, device, progress)
        plan["setup_seconds"] = round(time.perf_counter() - setup_start, 1)
        optimizer, scheduler, params = _stage2_optimizer(
            model, blocks, settings, steps * plan["max_epochs"], contrastive
        )
        first = plan["first_epoch"]
        if resume is not None and resume.stage == 2:
            first = resume.epoch + 1
            _load_trained(model, resume.model)
            optimizer.load_state_dict(resume.optimizer)
            scheduler.load_state_dict(resume.scheduler)
        loop.run(
            first, plan["first_epoch"] + plan["max_epochs"] - 1, settings.stage2_patience, optimizer, scheduler, params
        )

    if loop.best_model is not None:
        _load_trained(model, loop.best_model)
    if loop.best_stage() == 1 and model.config.image_tuned_blocks != base_tuned:
        model.config.image_tuned_blocks = base_tuned  # stage 1's model: its top blocks are the package's
        model.set_frozen(model.config.frozen)
    model.eval()
    result = TrainResult(
        model, loop.best["epoch"], loop.best["metrics"], loop.history, time.perf_counter() - start_time,
        stopped_early=loop.stopped_early, stages=stage_summaries(loop.history, loop.stage2, prepare_seconds),
        world_size=ctx.world_size,
    )  # fmt: skip
    result.best_metrics["prepare_seconds"] = round(prepare_seconds, 1)
    if result.stages and settings.stage1_augment:
        result.stages[0]["augmented_copies"] = copies
    if result.stages and loop.extension:
        result.stages[0]["extended"] = loop.extension
    if val_enc is not None and loop.history:
        val_logits = predict_encoded(model, val_enc, device, ctx=ctx, tasks=True)
        result.val_logits, result.val_targets = val_logits[0], val_targets[:, 0]
        result.baselines = modality_baselines(model, val_enc, val_targets[:, 0], targets[:, 0], device, ctx)
        if len(val_logits) > 1:
            result.task_val = [(logits, val_targets[:, t]) for t, logits in enumerate(val_logits)]
            result.task_baselines = [
                modality_baselines(model, val_enc, val_targets[:, t], targets[:, t], device, ctx, task=t)
                for t in range(len(val_logits))
            ]
    result.model = model.cpu()
    return result


class _Loop:
    """The epochs of one run, across its stages: the best epoch so far (the one every later
    epoch and stage must beat), early stopping, the history, and what a resume needs."""

    def __init__(
        self, model, train_enc, val_enc, targets, val_targets, weight, settings, device, progress, should_stop,
        ctx: distributed.Context = distributed.SINGLE,
    ):  # fmt: skip
        self.model, self.train_enc, self.val_enc = model, train_enc, val_enc
        self.targets, self.val_targets, self.weight = targets, val_targets, weight
        self.settings, self.device, self.progress, self.should_stop = settings, device, progress, should_stop
        self.ctx = ctx
        self.on_best: Callable | None = None
        self.on_epoch: Callable | None = None
        self.contrastive: ContrastiveLoss | None = None
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.best: dict = {"score": None, "epoch": 0, "metrics": {}}
        self.best_model: dict | None = None
        self.history: list[dict] = []
        self.stale = 0
        self.stage = 1
        self.stage2: dict | None = None
        self.stopped = False  # by should_stop
        self.stopped_early = False  # by the patience rule
        self.extension: dict | None = None  # more stage-1 epochs in the time left (_extend_stage1)

    def restore(self, state: TrainState) -> None:
        self.best, self.best_model, self.history = state.best, state.best_model, list(state.history)
        self.stale, self.stage, self.stage2 = state.stale_epochs, state.stage, state.stage2
        self.generator.set_state(state.generator)
        torch.set_rng_state(state.torch_rng)
        if self.contrastive is not None:
            self.contrastive.load_state_dict(state.contrastive)

    def state(self, epoch: int, optimizer, scheduler) -> TrainState:
        """What ``restore`` takes to continue after ``epoch`` as if the run had not stopped."""
        return TrainState(
            epoch=epoch,
            model=_trained_state(self.model, self.model.state_dict()),
            optimizer=copy.deepcopy(optimizer.state_dict()),
            scheduler=scheduler.state_dict(),
            generator=self.generator.get_state(),
            torch_rng=torch.get_rng_state(),
            best=copy.deepcopy(self.best),
            best_model=_trained_state(self.model, self.best_model),
            history=list(self.history),
            stale_epochs=self.stale,
            stage=self.stage,
            stage2=copy.deepcopy(self.stage2),
            world_size=self.ctx.world_size,
            contrastive={}
            if self.contrastive is None
            else {k: v.detach().cpu().clone() for k, v in self.contrastive.state_dict().items()},
        )

    def best_stage(self) -> int:
        return next((h.get("training_stage", 1) for h in self.history if h["epoch"] == self.best["epoch"]), 1)

    def run(self, first: int, last: int, patience: int | None, optimizer, scheduler, params) -> None:
        """Epochs ``first``..``last`` of the current stage, until a stop or the patience rule."""
        model, settings = self.model, self.settings
        # a run resumed after the epoch that ended this stage by the patience rule goes on to the next
        self.stopped_early = patience is not None and self.stale >= patience
        if self.stopped_early:
            return
        for epoch in range(first, last + 1):
            epoch_start = time.perf_counter()
            if len(self.train_enc.views) > 1:  # augmented copies: one of each image this epoch
                self.train_enc.draw_views(self.generator)
            totals = _train_epoch(
                model, self.train_enc, self.targets, self.weight, optimizer, scheduler, params, self.generator,
                settings, self.device, self.should_stop, self.progress, epoch, last, self.ctx, self.contrastive,
            )  # fmt: skip
            if totals.seen == 0:
                self.stopped = True
                break
            record = {
                "epoch": epoch,
                "training_stage": self.stage,
                "train_loss": totals.loss,
                "train_accuracy": totals.correct / max(1, totals.answered),
                **({} if totals.contrastive is None else {"train_contrastive_loss": totals.contrastive}),
                "complete": totals.seen == len(self.targets),  # False: cut short by a stop or the time limit
                "optimizer_steps": totals.steps,
                "samples_per_s": round(totals.seen / (time.perf_counter() - epoch_start), 1),  # all processes
            }
            report, score = _validate(model, self.val_enc, self.val_targets, self.device, record, self.ctx)
            record["epoch_seconds"] = round(time.perf_counter() - epoch_start, 2)
            self.history.append(record)
            if self.best["score"] is None or score > tuple(self.best["score"]):
                self.best = {"score": list(score), "epoch": epoch, "metrics": {**record, "report": report}}
                self.best_model, self.stale = _trained_state(model, model.state_dict()), 0
                if self.on_best is not None:
                    self.on_best(model, record)
                    model.train()
            else:
                self.stale += 1
            self.progress({"stage": "epoch", **record})
            if self.on_epoch is not None and record["complete"]:
                self.on_epoch(self.state(epoch, optimizer, scheduler))
            # rank 0 decides (its clock, its stop request) and every process leaves at this epoch;
            # the patience rule needs no vote: every process has the same validation logits
            if self.ctx.agree(self.should_stop):
                self.stopped = True
                break
            if patience is not None and self.stale >= patience:
                self.stopped_early = True
                break


EXTEND_LR = 0.5  # a stage-1 extension's cosine cycle starts from this share of stage 1's peak learning rate


def _extend_stage1(loop, model, optimizer, settings, steps, time_left, prepare_seconds, params, ctx) -> None:
    """More stage-1 epochs when stage 1 ran all its planned epochs (no stop, no patience rule),
    stage 2 does not run, and the time left fits at least two more: the recipe plans its epochs
    from an estimate of the machine's speed, which can be pessimistic, and a budget left unused
    is accuracy given away. The epochs that fit, measured by stage 1's own epochs (at most as
    many again), follow a second cosine cycle from EXTEND_LR of the peak rate (a warm restart,
    SGDR); the best epoch stays the one to beat. Only for epochs the recipe chose
    (``settings.extend_epochs``), not for a resumed run (its plan is its own)."""
    history = [h for h in loop.history if h.get("training_stage", 1) == 1]
    if not settings.extend_epochs or loop.stopped or loop.stopped_early or len(history) < max(1, settings.epochs):
        return
    epoch_s = sorted(h["epoch_seconds"] for h in history)[len(history) // 2]
    left, epoch_s = ctx.sum([time_left() if ctx.is_main else 0.0, epoch_s if ctx.is_main else 0.0])  # rank 0's
    extra = min(settings.epochs, int((left - prepare_seconds) / max(epoch_s, 1e-6)))
    if extra < 2:
        return
    for group in optimizer.param_groups:
        group["initial_lr"] = group["initial_lr"] * EXTEND_LR
    scheduler = get_cosine_schedule_with_warmup(optimizer, 0, steps * extra)
    first = history[-1]["epoch"] + 1
    loop.extension = {
        "epochs": [first, first + extra - 1],
        "why": f"stage 1 ran its {settings.epochs} planned epochs with {left:.0f} s left: {extra} more of about"
        f" {epoch_s:.0f} s, a second cosine cycle from {EXTEND_LR:g} x the learning rate",
    }
    loop.run(first, first + extra - 1, settings.patience, optimizer, scheduler, params)


COPIES_SHARE = 0.4  # stage 1's augmented copies are made only when they take at most this share of the time left


def _stage1_copies(settings: TrainSettings, encode_seconds: float, time_left, ctx, cacheable: bool = True) -> dict:
    """How many augmented copies stage 1 trains on: ``settings.augment_views``, unless making
    them (each costs about what encoding the training images once took, ``encode_seconds``)
    would take more than COPIES_SHARE of the time left; rank 0 decides under torchrun.
    ``cacheable``: the image encoder can cache its output (EfficientNet-Lite0's ``forward_below``)."""
    if not (settings.stage1_augment and settings.augment_views > 1 and "image_encoder" in settings.freeze):
        return {"copies": 1}
    if not cacheable:
        return {"copies": 1, "why": "this image encoder cannot cache augmented copies; the images train as they are"}
    needed = settings.augment_views * encode_seconds
    left = None if time_left is None else ctx.sum([time_left() if ctx.is_main else 0.0])[0]
    if left is None or needed <= COPIES_SHARE * left:
        return {"copies": settings.augment_views}
    return {
        "copies": 1,
        "why": f"making {settings.augment_views} would take about {needed:.0f} s of the {left:.0f} s left; the"
        " images train as they are",
    }


def _class_weight(targets: torch.Tensor, n_labels: int, device: torch.device) -> torch.Tensor:
    """Inverse class frequency, normalised so a balanced set gets weights of 1."""
    counts = torch.bincount(targets, minlength=n_labels).float()
    return (counts.sum() / (n_labels * counts.clamp(min=1))).to(device)


def _adamw(groups: list[dict], weight_decay: float) -> torch.optim.AdamW:
    """AdamW with its fused kernel (one pass over all parameters, on the CPU as on a GPU):
    PyTorch's default on a CPU loops over the parameters one by one, which is slower per step
    (a training record's ``throughput`` shows samples/s, e.g. after ``python -m mmdemo train``
    on ``python -m mmdemo make-real-benchmark --kind digits``)."""
    return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=True)


def _optimizer(
    model: MultimodalClassifier,
    settings: TrainSettings,
    steps_per_epoch: int,
    contrastive: ContrastiveLoss | None = None,
):
    """AdamW with the encoders' own learning rate, warm-up then cosine decay over all epochs;
    the contrastive loss's projections (when on) learn at the fusion's rate."""
    encoder_params = [p for part in PARTS if part not in settings.freeze for p in getattr(model, part).parameters()]
    head_params = list(model.fusion.parameters()) + [p for head in model.heads() for p in head.parameters()]
    groups = [{"params": head_params, "lr": settings.lr}]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": settings.encoder_lr})
    if contrastive is not None:
        groups += contrastive.parameter_groups(settings.lr)
    optimizer = _adamw(groups, settings.weight_decay)
    total_steps = steps_per_epoch * settings.epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, int(settings.warmup * total_steps)), total_steps)
    return optimizer, scheduler, [p for g in groups for p in g["params"]]


def _stage2_optimizer(
    model: MultimodalClassifier, blocks: list[nn.Module], settings: TrainSettings, total_steps: int,
    contrastive: ContrastiveLoss | None = None,
):  # fmt: skip
    """AdamW for stage 2: the fusion and head (and the contrastive loss's projections, when on)
    at ``stage2_lr``, the k-th block from the top at ``stage2_lr * layer_decay**k`` (features
    further down are more generic: they move less); no weight decay on BatchNorm scales and
    shifts; warm-up then cosine decay over stage 2."""
    head_params = list(model.fusion.parameters()) + [p for head in model.heads() for p in head.parameters()]
    groups = [{"params": head_params, "lr": settings.stage2_lr}]
    for k, block in enumerate(blocks, start=1):
        lr = settings.stage2_lr * settings.layer_decay**k
        weights = [p for p in block.parameters() if p.ndim > 1]
        norms = [p for p in block.parameters() if p.ndim <= 1]
        groups += [{"params": weights, "lr": lr}, {"params": norms, "lr": lr, "weight_decay": 0.0}]
    if contrastive is not None:
        groups += contrastive.parameter_groups(settings.stage2_lr)
    optimizer = _adamw(groups, settings.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, int(settings.warmup * total_steps)), total_steps)
    return optimizer, scheduler, [p for g in groups for p in g["params"]]


class StepOutput(NamedTuple):
    task_logits: tuple[torch.Tensor, ...]  # (B, L_t) for each task
    contrastive: torch.Tensor | None  # (B,) the contrastive loss of each row; None when off


class TrainStep(nn.Module):
    """The training forward of one batch as a module: DistributedDataParallel syncs the
    gradients of what runs inside the forward of the module it wraps (the contrastive loss's
    projections too, so they stay the same on every process)."""

    def __init__(self, model: MultimodalClassifier, contrastive: ContrastiveLoss | None = None):
        super().__init__()
        self.model = model
        self.contrastive = contrastive

    def forward(self, encoded: Encoded, rows, drop_image, drop_text, device: torch.device) -> StepOutput:
        fm, px, ts, mask, index = encoded.batch(self.model, rows, device)
        task_logits = self.model.forward_fusion(fm, ts, mask, drop_image, drop_text, index, px).task_logits()
        if self.contrastive is None:
            return StepOutput(task_logits, None)
        # the true pairs, whatever modality dropout hid from the classifier
        return StepOutput(task_logits, self.contrastive(self.model.fusion, fm, px, ts, mask, index))

    def frozen_names(self) -> list[str]:
        """Parameters and buffers of the frozen encoders (identical on every process)."""
        frozen = tuple(f"model.{part}." for part in self.model.config.frozen)
        names = [name for name, _ in self.named_parameters()] + [name for name, _ in self.named_buffers()]
        return [name for name in names if name.startswith(frozen)]


class EpochTotals(NamedTuple):
    loss: float  # mean training loss
    correct: int  # answers predicted right, over every task (all processes)
    seen: int  # rows trained on (all processes)
    steps: int  # optimizer steps
    answered: int  # labels trained on, over every task (``seen`` for one task)
    contrastive: float | None = None  # mean contrastive loss per row (all processes); None when off


def _train_epoch(
    model, encoded, targets, weight, optimizer, scheduler, params, generator, settings, device, should_stop, progress,
    epoch, last_epoch, ctx: distributed.Context = distributed.SINGLE, contrastive: ContrastiveLoss | None = None,
) -> EpochTotals:  # fmt: skip
    """One pass over the training rows (until ``should_stop``, decided on rank 0).

    Every process draws the same global batches of ``world_size * batch_size`` rows and trains
    on its share of each; the loss is scaled so that DDP's average of the gradients is the
    gradient of the global batch's mean loss, as one process with that batch would compute it.
    With ``contrastive``, ``settings.contrastive`` times its mean over the rows is added (under
    torchrun each process's negatives are the rows of its share)."""
    model.train()
    step = TrainStep(model, contrastive)
    step = ctx.wrap(step, ignore=step.frozen_names())
    total_loss, correct, seen, answered, seen_all, steps = 0.0, 0, 0, 0, 0, 0
    total_contrastive = 0.0
    task_weights = settings.task_weights or [1.0] * targets.shape[1]
    batches = grouped_batches(encoded.rows_image, settings.batch_size * ctx.world_size, generator)
    for i, batch in enumerate(batches):
        if ctx.agree(should_stop):
            break
        drop_image, drop_text = modality_dropout(len(batch), settings.modality_dropout, generator)
        lo, hi = ctx.share(len(batch))
        share = slice(lo, hi) if hi > lo else slice(0, 1)  # no rows of its own: one row, weight 0
        rows, scale = batch[share], float(hi > lo)
        y = targets[rows].to(device)  # (b, tasks), -1: no label for that task
        with autocast(device):
            task_logits, per_row_contrastive = step(
                encoded, rows, drop_image[share].to(device), drop_text[share].to(device), device
            )
        loss = torch.zeros((), device=device)
        for t, logits in enumerate(task_logits):
            known = y[:, t] >= 0
            w = weight[t] if weight is not None else None
            per_row = F.cross_entropy(
                logits.float()[known], y[known, t], weight=w, label_smoothing=settings.label_smoothing, reduction="none"
            )
            # the mean over the global batch's labelled rows (weighted: over the sum of their class weights)
            labelled = targets[batch, t]
            labelled = labelled[labelled >= 0].to(device)
            denominator = (w[labelled].sum() if w is not None else torch.tensor(float(len(labelled)))).clamp(min=1)
            loss = loss + task_weights[t] * per_row.sum() * scale / denominator
            if scale:
                correct += int((logits.argmax(-1)[known] == y[known, t]).sum())
                answered += int(known.sum())
        objective = loss
        if per_row_contrastive is not None:  # the mean over the global batch's rows, as for the loss above
            contrastive_loss = per_row_contrastive.sum() * scale / len(batch)
            objective = loss + settings.contrastive * contrastive_loss
            total_contrastive += contrastive_loss.item() * len(batch)
        optimizer.zero_grad(set_to_none=True)
        (objective * ctx.world_size).backward()  # DDP divides the summed gradients by world_size
        if settings.grad_clip:
            nn.utils.clip_grad_norm_(params, settings.grad_clip)
        optimizer.step()
        scheduler.step()
        steps += 1
        total_loss += loss.item() * len(batch)  # this process's part of the global batch's loss
        seen += len(rows) if scale else 0
        seen_all += len(batch)
        progress(
            {
                "stage": "train",
                "epoch": epoch,
                "epochs": last_epoch,
                "step": i + 1,
                "steps": len(batches),
                "loss": total_loss * ctx.world_size / seen_all,  # rank 0's estimate under torchrun
            }
        )
    total_loss, correct, seen, answered, total_contrastive = ctx.sum(
        [total_loss, correct, seen, answered, total_contrastive]
    )
    mean_contrastive = total_contrastive / max(1, seen) if contrastive is not None else None
    return EpochTotals(total_loss / max(1, seen), int(correct), int(seen), steps, int(answered), mean_contrastive)


def _validate(model, encoded, targets, device, record, ctx=distributed.SINGLE) -> tuple[dict, tuple]:
    """Adds validation loss, accuracy and macro F1 to ``record``; returns the report and the
    score epochs are ranked by (accuracy, then lower loss); under torchrun every process gets
    the same logits, so the same score. With several tasks, the first task's figures are the
    record's, each task's are under ``tasks``, and the score is the mean over the tasks."""
    if encoded is None:
        return {}, (record["train_accuracy"], -record["train_loss"])
    all_logits = predict_encoded(model, encoded, device, ctx=ctx, tasks=True)
    names, scores, losses = model.config.task_names(), [], []
    for t, (logits, labels) in enumerate(zip(all_logits, model.config.task_labels())):
        y = targets[:, t]
        known = y >= 0
        loss = float(F.cross_entropy(logits[known], y[known])) if known.any() else float("nan")
        truth = encoded.labels if t == 0 else [labels[j] if j >= 0 else "" for j in y.tolist()]
        report = _report(labels, logits, truth)
        if t == 0:
            first = report
            record["val_loss"], record["val_accuracy"], record["val_macro_f1"] = (
                loss,
                report["accuracy"],
                report["macro_f1"],
            )
        if len(all_logits) > 1:
            task = {"val_loss": loss, "val_accuracy": report["accuracy"], "val_macro_f1": report["macro_f1"]}
            record.setdefault("tasks", {})[names[t]] = task
        if known.any():
            scores.append(report["accuracy"])
            losses.append(loss)
    if len(all_logits) == 1:
        return first, (first["accuracy"], -record["val_loss"])
    return first, (sum(scores) / len(scores), -sum(losses) / len(losses))


def _report(labels: list[str], logits: torch.Tensor, truth: list[str]) -> dict:
    """The classification report of the rows that have a label ("" = none for this task)."""
    keep = [i for i, t in enumerate(truth) if t]
    predicted = [labels[j] for j in logits[keep].argmax(-1).tolist()]
    truth = [truth[i] for i in keep]
    return classification_report(truth, predicted, labels + sorted(set(truth) - set(labels)))


def _trained_state(model: MultimodalClassifier, state: dict) -> dict[str, torch.Tensor]:
    """``state`` without what comes from the packages (frozen encoders but their tuned blocks)."""
    return {k: v.detach().cpu().clone() for k, v in state.items() if model.config.stores(k)}


def _load_trained(model: MultimodalClassifier, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and not any(model.config.stores(k) for k in missing), (missing, unexpected)
