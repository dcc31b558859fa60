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
from ..model.classifier import PARTS, ModelConfig, MultimodalClassifier, build_model
from . import distributed
from .augment import modality_dropout
from .features import Encoded
from .scoring import modality_baselines, predict_encoded
from .settings import Progress, TrainResult, TrainSettings, TrainState
from .stage2 import agree_plan, plan_stage2, stage_summaries


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_for(labels: list[str], init: MultimodalClassifier | None, config: ModelConfig | None) -> MultimodalClassifier:
    """The model to train: ``init`` (a loaded checkpoint) with its head resized when the data
    has labels it does not know, or a new model from ``config``."""
    if init is None:
        config = copy.deepcopy(config) if config else ModelConfig(labels=list(labels))
        config.labels = list(labels)
        return build_model(config)
    model = copy.deepcopy(init)
    # what the checkpoint stored stays stored, even if this run freezes it (its weights are not
    # the package's any more)
    stored = {part for part in PARTS if part not in init.config.referenced_parts()}
    model.config.trained_parts = sorted(set(model.config.trained_parts) | stored)
    if set(labels) - set(model.config.labels):
        model.config.labels = list(labels)
        last = model.head[-1]
        model.head[-1] = nn.Linear(last.in_features, len(labels))
    return model


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
    labels = sorted({e.label for e in train_examples} | {e.label for e in val_examples})
    if len(labels) < 2:
        raise ValueError(f"training needs at least 2 classes, found {labels}")

    model = model_for(labels, init, config)
    model.set_frozen(settings.freeze)
    trained = {part for part in PARTS if part not in settings.freeze}  # this run moves their weights
    model.config.trained_parts = sorted(set(model.config.trained_parts) | trained)
    model.to(device)
    label_index = {label: i for i, label in enumerate(model.config.labels)}
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
    targets = torch.tensor([label_index[e.label] for e in train_examples])
    val_targets = torch.tensor([label_index.get(e.label, -1) for e in val_examples])
    prepare_seconds = time.perf_counter() - start_time

    weight = _class_weight(targets, len(label_index), device) if settings.class_weights else None
    loop = _Loop(model, train_enc, val_enc, targets, val_targets, weight, settings, device, progress, should_stop, ctx)
    loop.on_best, loop.on_epoch = on_best, on_epoch
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
        optimizer, scheduler, params = _optimizer(model, settings, steps)
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
        optimizer, scheduler, params = _stage2_optimizer(model, blocks, settings, steps * plan["max_epochs"])
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
    if val_enc is not None and loop.history:
        result.val_logits, result.val_targets = predict_encoded(model, val_enc, device, ctx=ctx), val_targets
        result.baselines = modality_baselines(model, val_enc, val_targets, targets, device, ctx)
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
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.best: dict = {"score": None, "epoch": 0, "metrics": {}}
        self.best_model: dict | None = None
        self.history: list[dict] = []
        self.stale = 0
        self.stage = 1
        self.stage2: dict | None = None
        self.stopped = False  # by should_stop
        self.stopped_early = False  # by the patience rule

    def restore(self, state: TrainState) -> None:
        self.best, self.best_model, self.history = state.best, state.best_model, list(state.history)
        self.stale, self.stage, self.stage2 = state.stale_epochs, state.stage, state.stage2
        self.generator.set_state(state.generator)
        torch.set_rng_state(state.torch_rng)

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
                settings, self.device, self.should_stop, self.progress, epoch, last, self.ctx,
            )  # fmt: skip
            if totals.seen == 0:
                self.stopped = True
                break
            record = {
                "epoch": epoch,
                "training_stage": self.stage,
                "train_loss": totals.loss,
                "train_accuracy": totals.correct / totals.seen,
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


def _optimizer(model: MultimodalClassifier, settings: TrainSettings, steps_per_epoch: int):
    """AdamW with the encoders' own learning rate, warm-up then cosine decay over all epochs."""
    encoder_params = [p for part in PARTS if part not in settings.freeze for p in getattr(model, part).parameters()]
    head_params = list(model.fusion.parameters()) + list(model.head.parameters())
    groups = [{"params": head_params, "lr": settings.lr}]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": settings.encoder_lr})
    optimizer = _adamw(groups, settings.weight_decay)
    total_steps = steps_per_epoch * settings.epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, int(settings.warmup * total_steps)), total_steps)
    return optimizer, scheduler, head_params + encoder_params


def _stage2_optimizer(model: MultimodalClassifier, blocks: list[nn.Module], settings: TrainSettings, total_steps: int):
    """AdamW for stage 2: the fusion and head at ``stage2_lr``, the k-th block from the top at
    ``stage2_lr * layer_decay**k`` (features further down are more generic: they move less);
    no weight decay on BatchNorm scales and shifts; warm-up then cosine decay over stage 2."""
    head_params = list(model.fusion.parameters()) + list(model.head.parameters())
    groups = [{"params": head_params, "lr": settings.stage2_lr}]
    for k, block in enumerate(blocks, start=1):
        lr = settings.stage2_lr * settings.layer_decay**k
        weights = [p for p in block.parameters() if p.ndim > 1]
        norms = [p for p in block.parameters() if p.ndim <= 1]
        groups += [{"params": weights, "lr": lr}, {"params": norms, "lr": lr, "weight_decay": 0.0}]
    optimizer = _adamw(groups, settings.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, int(settings.warmup * total_steps)), total_steps)
    return optimizer, scheduler, [p for g in groups for p in g["params"]]


class TrainStep(nn.Module):
    """The training forward of one batch as a module: DistributedDataParallel syncs the
    gradients of what runs inside the forward of the module it wraps."""

    def __init__(self, model: MultimodalClassifier):
        super().__init__()
        self.model = model

    def forward(self, encoded: Encoded, rows, drop_image, drop_text, device: torch.device) -> torch.Tensor:
        fm, px, ts, mask, index = encoded.batch(self.model, rows, device)
        return self.model.forward_fusion(fm, ts, mask, drop_image, drop_text, index, px).logits  # (B, L)

    def frozen_names(self) -> list[str]:
        """Parameters and buffers of the frozen encoders (identical on every process)."""
        frozen = tuple(f"model.{part}." for part in self.model.config.frozen)
        names = [name for name, _ in self.named_parameters()] + [name for name, _ in self.named_buffers()]
        return [name for name in names if name.startswith(frozen)]


class EpochTotals(NamedTuple):
    loss: float  # mean training loss
    correct: int  # rows predicted right (all processes)
    seen: int  # rows trained on (all processes)
    steps: int  # optimizer steps


def _train_epoch(
    model, encoded, targets, weight, optimizer, scheduler, params, generator, settings, device, should_stop, progress,
    epoch, last_epoch, ctx: distributed.Context = distributed.SINGLE,
) -> EpochTotals:  # fmt: skip
    """One pass over the training rows (until ``should_stop``, decided on rank 0).

    Every process draws the same global batches of ``world_size * batch_size`` rows and trains
    on its share of each; the loss is scaled so that DDP's average of the gradients is the
    gradient of the global batch's mean loss, as one process with that batch would compute it."""
    model.train()
    step = TrainStep(model)
    step = ctx.wrap(step, ignore=step.frozen_names())
    total_loss, correct, seen, seen_all, steps = 0.0, 0, 0, 0, 0
    batches = grouped_batches(encoded.rows_image, settings.batch_size * ctx.world_size, generator)
    for i, batch in enumerate(batches):
        if ctx.agree(should_stop):
            break
        drop_image, drop_text = modality_dropout(len(batch), settings.modality_dropout, generator)
        lo, hi = ctx.share(len(batch))
        share = slice(lo, hi) if hi > lo else slice(0, 1)  # no rows of its own: one row, weight 0
        rows, scale = batch[share], float(hi > lo)
        y = targets[rows].to(device)
        with autocast(device):
            logits = step(encoded, rows, drop_image[share].to(device), drop_text[share].to(device), device)
            per_row = F.cross_entropy(
                logits.float(), y, weight=weight, label_smoothing=settings.label_smoothing, reduction="none"
            )
        # the mean over the global batch (weighted: over the sum of its rows' class weights)
        denominator = weight[targets[batch].to(device)].sum() if weight is not None else len(batch)
        loss = per_row.sum() * scale / denominator
        optimizer.zero_grad(set_to_none=True)
        (loss * ctx.world_size).backward()  # DDP divides the summed gradients by world_size
        if settings.grad_clip:
            nn.utils.clip_grad_norm_(params, settings.grad_clip)
        optimizer.step()
        scheduler.step()
        steps += 1
        total_loss += loss.item() * len(batch)  # this process's part of the global batch's loss
        correct += int((logits.argmax(-1) == y).sum()) if scale else 0
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
    total_loss, correct, seen = ctx.sum([total_loss, correct, seen])
    return EpochTotals(total_loss / max(1, seen), int(correct), int(seen), steps)


def _validate(model, encoded, targets, device, record, ctx=distributed.SINGLE) -> tuple[dict, tuple]:
    """Adds validation loss, accuracy and macro F1 to ``record``; returns the report and the
    score epochs are ranked by (accuracy, then lower loss); under torchrun every process gets
    the same logits, so the same score."""
    if encoded is None:
        return {}, (record["train_accuracy"], -record["train_loss"])
    logits = predict_encoded(model, encoded, device, ctx=ctx)
    known = targets >= 0
    record["val_loss"] = float(F.cross_entropy(logits[known], targets[known])) if known.any() else float("nan")
    report = _report(model.config.labels, logits, targets, encoded.labels)
    record["val_accuracy"], record["val_macro_f1"] = report["accuracy"], report["macro_f1"]
    return report, (report["accuracy"], -record["val_loss"])


def _report(labels: list[str], logits: torch.Tensor, targets: torch.Tensor, truth: list[str]) -> dict:
    predicted = [labels[j] for j in logits.argmax(-1).tolist()]
    return classification_report(truth, predicted, labels + sorted(set(truth) - set(labels)))


def _trained_state(model: MultimodalClassifier, state: dict) -> dict[str, torch.Tensor]:
    """``state`` without what comes from the packages (frozen encoders but their tuned blocks)."""
    return {k: v.detach().cpu().clone() for k, v in state.items() if model.config.stores(k)}


def _load_trained(model: MultimodalClassifier, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and not any(model.config.stores(k) for k in missing), (missing, unexpected)
