"""The training engine shared by the CLI and the app's fine-tune tab.

One plain loop: AdamW, linear warm-up then cosine decay, cross-entropy (optionally class
weighted), gradient clipping, modality dropout, evaluation after every epoch, the best
epoch on validation kept. Progress goes through a callback (tqdm in the CLI, gr.Progress in
the UI), so this module imports no UI.

Speed on a CPU comes from encoding each input once:
- every image is decoded and resized once (uint8 in memory) and, when the image encoder is
  frozen, encoded once; the same for every distinct text and a frozen text encoder;
- batches group the rows of the same image, so an image with 20 questions is encoded once
  per step even when its encoder is trained.

Two stages (the recipe's default): stage 1 trains the fusion and head on cached encoder
outputs until early stopping; then, when the time left allows (``time_left``), stage 2 also
trains the top blocks of the frozen image encoder, with a lower rate for each block further
down (layer-wise decay), its BatchNorm statistics kept (the encoder stays in eval mode), and
augmented copies of the training images whose meaning is kept (no flips; small shifts; colour
jitter only when no question is about brightness or colour). What lies below those blocks is
computed once per copy and cached, so a stage-2 step runs only the top blocks. Stage 2 keeps
stage 1's best epoch as the one to beat: if no stage-2 epoch is better on validation, the
model is stage 1's.

Under ``torchrun`` the same loop runs data-parallel (distributed.py): each process takes its
share of every global batch (``world_size`` x ``batch_size`` rows) and DDP averages the
gradients, so an epoch takes ``1 / world_size`` of the optimizer steps; the encoder cache is
built in shares and gathered; stop decisions come from rank 0; only rank 0 writes.
"""

from __future__ import annotations

import copy
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from ..datasets.csv_table import Dataset, Example
from ..device import autocast, resolve_device
from ..imaging import decode_image
from ..metrics import classification_report, reliability
from ..model.classifier import PARTS, ModelConfig, MultimodalClassifier, build_model
from ..model.encoders import load_tokenizer
from ..model.preprocess import image_to_uint8, normalize_pixels, tokenize
from . import distributed

Progress = Callable[[dict], None]
IDENTITY = torch.tensor([0.0, 0.0, 1.0, 0.0])  # augmentation parameters that leave an image as it is


@dataclass
class TrainSettings:
    epochs: int = 10
    batch_size: int = 64  # rows (questions) per step
    lr: float = 3e-4  # fusion and head
    encoder_lr: float = 1e-4  # encoders that are trained
    weight_decay: float = 0.05
    warmup: float = 0.05  # fraction of the steps
    freeze: list[str] = field(default_factory=lambda: list(PARTS))
    modality_dropout: float = 0.1  # per sample: image dropped with p/2, text dropped with p/2
    class_weights: bool = False
    label_smoothing: float = 0.0
    grad_clip: float = 1.0
    patience: int | None = None  # stop after this many epochs without a better validation score
    cpu_threads: int | None = None  # torch threads on a CPU (None: torch's default)
    seed: int = 0
    device: str | None = None
    # stage 2, after stage 1 ended on its own with time to spare: also train the top
    # ``stage2_blocks`` blocks of the frozen image encoder (0: no stage 2)
    stage2_blocks: int = 0
    stage2_epochs: int = 10  # at most (fewer when the time left is shorter)
    stage2_lr: float = 1e-4  # fusion and head; the highest block gets stage2_lr * layer_decay ...
    layer_decay: float = 0.5  # ... and each block below it layer_decay times less
    stage2_patience: int = 3
    stage2_cost: float = 1.0  # one stage-2 epoch takes this many stage-1 epochs (the recipe's estimate)
    # stage 2's augmentation: ``augment_views`` copies of each training image (the first as it
    # is), shifted by up to ``augment_shift`` of the side, brightness and contrast jittered by
    # up to ``augment_colour``; never flipped
    augment_views: int = 1
    augment_shift: float = 0.0
    augment_colour: float = 0.0


@dataclass
class TrainResult:
    model: MultimodalClassifier  # holds the best epoch's weights
    best_epoch: int
    best_metrics: dict
    history: list[dict]
    seconds: float
    stopped_early: bool = False  # by the patience rule
    val_logits: torch.Tensor | None = None  # (N, L) of the best model on the validation rows
    val_targets: torch.Tensor | None = None  # (N,) label index, -1 for labels the model lacks
    baselines: dict = field(default_factory=dict)  # validation accuracy: majority, image only, text only
    stages: list[dict] = field(default_factory=list)  # what each stage did (or why it did not run)
    world_size: int = 1  # processes that trained it (torchrun)


@dataclass
class TrainState:
    """Everything a run needs to continue after its last complete epoch exactly as if it had
    not stopped: weights, optimizer and scheduler state, random generators, the best epoch."""

    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    generator: torch.Tensor
    torch_rng: torch.Tensor
    best: dict  # {"score": [...], "epoch": int, "metrics": dict}
    best_model: dict[str, torch.Tensor]
    history: list[dict]
    stale_epochs: int
    stage: int = 1  # the stage that epoch belongs to
    stage2: dict | None = None  # stage 2's plan, once decided (see _plan_stage2)
    world_size: int = 1  # a run resumes with as many processes as it had


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


TEXT_CHUNK = 1024  # distinct texts tokenized between two progress events and stop checks
ENCODE_CHUNK = 256  # distinct texts encoded (frozen text encoder) per forward


class Stopped(RuntimeError):
    """Stop asked while the data was being prepared (before the first training step)."""


class Encoded:
    """The inputs of a dataset prepared once: uint8 images per distinct image, token ids per
    distinct text, and encoder outputs for frozen encoders. Each phase runs in chunks, with a
    progress event (``done``/``total``) and a ``should_stop`` check after each, so a large
    training set shows where it is and Stop ends it within one chunk (``Stopped``)."""

    def __init__(
        self,
        model: MultimodalClassifier,
        examples: list[Example],
        device: torch.device,
        progress: Progress,
        ctx: distributed.Context = distributed.SINGLE,
        should_stop: Callable[[], bool] | None = None,
    ):
        """Under torchrun (``ctx``) each process decodes and encodes its share of the images and
        texts, and every process gets the whole cache. ``should_stop`` is asked between chunks
        (one process only: under torchrun a stop arrives between epochs)."""
        config = model.config
        stop = should_stop if should_stop is not None and not ctx.distributed else (lambda: False)

        def step(stage: str, done: int, total: int) -> None:
            progress({"stage": stage, "done": done, "total": total})
            if done < total and stop():  # between two chunks (a one-chunk phase is not interrupted)
                raise Stopped(
                    f"stopped while preparing the data ({stage} {done:,}/{total:,}), before the first training "
                    "step; nothing was saved"
                )

        self.image_index: dict = {}
        self.text_index: dict = {}
        for e in examples:
            self.image_index.setdefault(e.image, len(self.image_index))
            self.text_index.setdefault(e.text, len(self.text_index))
        self.rows_image = torch.tensor([self.image_index[e.image] for e in examples])
        self.rows_text = torch.tensor([self.text_index[e.text] for e in examples])
        self.labels = [e.label for e in examples]

        paths = list(self.image_index)

        def load(lo: int, hi: int) -> torch.Tensor:
            images = []
            for i in range(lo, hi):
                images.append(image_to_uint8(decode_image(paths[i]), config))
                if (i - lo + 1) % 200 == 0 or i + 1 == hi:
                    step("load images", i - lo + 1, hi - lo)
            return torch.stack(images)

        self.pixels = ctx.map_concat(len(paths), load)  # (N_img, 3, S, S) uint8
        texts = list(self.text_index)
        self.input_ids, self.attention_mask = _tokenize_in_chunks(texts, config, step)  # (N_txt, T)

        self.features = self.text_states = None
        model.eval()
        with torch.no_grad(), autocast(device):
            if "image_encoder" in config.frozen:

                def encode_images(lo: int, hi: int) -> torch.Tensor:
                    chunks = []
                    for start in range(lo, hi, 64):
                        px = normalize_pixels(self.pixels[start : min(start + 64, hi)], config).to(device)
                        chunks.append(model.encode_image(px).float().cpu())
                        step("encode images", start - lo + len(px), hi - lo)
                    return torch.cat(chunks)

                self.features = ctx.map_concat(len(self.pixels), encode_images)  # (N_img, C, h, w)
            if "text_encoder" in config.frozen:

                def encode_texts(lo: int, hi: int) -> torch.Tensor:
                    chunks = []
                    for start in range(lo, hi, ENCODE_CHUNK):
                        ids = self.input_ids[start : min(start + ENCODE_CHUNK, hi)].to(device)
                        mask = self.attention_mask[start : min(start + ENCODE_CHUNK, hi)].to(device)
                        chunks.append(model.encode_text(ids, mask).float().cpu())
                        step("encode texts", start - lo + len(ids), hi - lo)
                    return torch.cat(chunks)

                self.text_states = ctx.map_concat(len(texts), encode_texts)  # (N_txt, T, E)
        # stage 2: the image encoder's output below its ``top`` trained blocks, per copy
        self.top = 0
        self.below: torch.Tensor | None = None  # (V, N_img, C, h, w)
        self.views = IDENTITY.expand(1, len(self.pixels), 4)  # (V, N_img, [dx, dy, gain, bias])
        self.view = torch.zeros(len(self.pixels), dtype=torch.long)  # the copy each image shows now

    def cache_below(
        self,
        model: MultimodalClassifier,
        top: int,
        settings: TrainSettings | None,
        device: torch.device,
        progress: Progress,
    ) -> None:
        """Stage 2: compute once what lies below the image encoder's ``top`` trained blocks, for
        every image and (with ``settings``' augmentation) its augmented copies."""
        config = model.config
        if settings is not None and settings.augment_views > 1:
            generator = torch.Generator().manual_seed(settings.seed + 2)  # the same copies after a resume
            self.views = augment_views(len(self.pixels), settings, generator)
        else:
            self.views = IDENTITY.expand(1, len(self.pixels), 4)
        self.top, self.features, self.view = top, None, torch.zeros(len(self.pixels), dtype=torch.long)
        model.eval()
        copies = []
        with torch.no_grad(), autocast(device):
            for v, params in enumerate(self.views):
                chunks = []
                for start in range(0, len(self.pixels), 64):
                    index = torch.arange(start, min(start + 64, len(self.pixels)))
                    px = normalize_pixels(augment(self.pixels[index], params[index]), config).to(device)
                    chunks.append(model.image_encoder.forward_below(px, top).float().cpu())
                    progress({"stage": "encode images", "done": v * len(self.pixels) + start + len(px),
                              "total": len(self.views) * len(self.pixels)})  # fmt: skip
                copies.append(torch.cat(chunks))
        self.below = torch.stack(copies)

    def draw_views(self, generator: torch.Generator) -> None:
        """The copy of each image the next epoch shows."""
        self.view = torch.randint(len(self.views), (len(self.pixels),), generator=generator)

    def batch(self, model: MultimodalClassifier, rows: torch.Tensor, device: torch.device):
        """Feature maps, text states and mask for the given rows; trained encoders run here."""
        config = model.config
        img_ids, img_inverse = torch.unique(self.rows_image[rows], return_inverse=True)
        view = self.view[img_ids]
        pixels = (
            self.pixels[img_ids] if self.below is None else augment(self.pixels[img_ids], self.views[view, img_ids])
        )
        px = normalize_pixels(pixels, config).to(device).contiguous(memory_format=torch.channels_last)
        if self.below is not None:
            feature_map = model.image_encoder.forward_top(self.below[view, img_ids].to(device), self.top)
        elif self.features is not None:
            feature_map = self.features[img_ids].to(device)
        else:
            feature_map = model.encode_image(px)
        # feature_map (U, C, h, w), one per distinct image; img_inverse (B,) maps rows to it

        txt = self.rows_text[rows]
        mask = self.attention_mask[txt]
        length = int(mask.sum(1).max())
        mask = mask[:, :length].to(device)
        if self.text_states is not None:
            text_states = self.text_states[txt, :length].to(device)
        else:
            text_states = model.encode_text(self.input_ids[txt, :length].to(device), mask)
        return feature_map, px, text_states, mask, img_inverse.to(device)


def augment_views(n_images: int, settings: TrainSettings, generator: torch.Generator) -> torch.Tensor:
    """(V, N, 4) augmentation of ``settings.augment_views`` copies of ``n_images`` images:
    shift (dx, dy, fractions of the side) and colour (gain, bias); copy 0 is the image as it is.

    Flips are never used: they turn "left" into "right" and a 2 into something else."""
    u = torch.rand(settings.augment_views, n_images, 4, generator=generator) * 2 - 1  # U(-1, 1)
    views = torch.stack(
        [
            u[..., 0] * settings.augment_shift,
            u[..., 1] * settings.augment_shift,
            1 + u[..., 2] * settings.augment_colour,  # contrast
            u[..., 3] * settings.augment_colour * 128,  # brightness, in pixel values
        ],
        -1,
    )
    views[0] = IDENTITY
    return views


def augment(pixels: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """uint8 images (U, 3, S, S) with params (U, [dx, dy, gain, bias]) -> float (U, 3, S, S) in
    0..255: shifted (the edge pixels repeated into the gap), then gain and bias around mid-grey."""
    x = pixels.float()
    if torch.equal(params, IDENTITY.expand_as(params)):
        return x
    theta = torch.zeros(len(x), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = -2 * params[:, :2]  # a shift by d of the side moves the sampling grid by -2d
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gain, bias = params[:, 2, None, None, None], params[:, 3, None, None, None]
    return ((x - 128) * gain + 128 + bias).clamp(0, 255)


def _tokenize_in_chunks(texts: list[str], config: ModelConfig, step) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and masks of ``texts``, TEXT_CHUNK at a time (``step`` after each), padded to
    the longest text of all, as one ``tokenize`` call would give."""
    tokenizer = load_tokenizer(config.text_model)
    ids, masks = [], []
    for start in range(0, len(texts), TEXT_CHUNK):
        tb = tokenize(tokenizer, texts[start : start + TEXT_CHUNK], config.max_tokens)
        ids.append(tb.input_ids)
        masks.append(tb.attention_mask)
        step("tokenize texts", start + len(tb.input_ids), len(texts))
    length = max(t.shape[1] for t in ids)
    input_ids = torch.full((len(texts), length), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(texts), length), dtype=torch.long)
    start = 0
    for chunk_ids, chunk_mask in zip(ids, masks):
        input_ids[start : start + len(chunk_ids), : chunk_ids.shape[1]] = chunk_ids
        attention_mask[start : start + len(chunk_ids), : chunk_mask.shape[1]] = chunk_mask
        start += len(chunk_ids)
    return input_ids, attention_mask


def grouped_batches(rows_image: torch.Tensor, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Row batches in a random order that keeps the rows of one image together."""
    # shuffle the rows, then stable-sort them by a random rank of their image
    shuffled = torch.randperm(len(rows_image), generator=generator)
    rank = torch.randperm(int(rows_image.max()) + 1, generator=generator)
    order = shuffled[torch.argsort(rank[rows_image[shuffled]], stable=True)]
    return list(order.split(batch_size))


@torch.no_grad()
def predict_encoded(
    model: MultimodalClassifier,
    encoded: Encoded,
    device: torch.device,
    batch_size: int = 256,
    drop: str | None = None,
    ctx: distributed.Context = distributed.SINGLE,
) -> torch.Tensor:
    """(N, L) logits of every row, in row order; ``drop`` "image" or "text" masks that modality.
    Under torchrun (``ctx``) each process runs its share of the batches and all get every row."""
    model.eval()
    # group by image so trained image encoders still run once per image
    order = torch.argsort(encoded.rows_image, stable=True)
    chunks = order.split(batch_size)

    def run(lo: int, hi: int) -> torch.Tensor:
        all_logits = []
        for chunk in chunks[lo:hi]:
            masked = torch.full((len(chunk),), True, device=device)
            drop_image = masked if drop == "image" else None
            drop_text = masked if drop == "text" else None
            with autocast(device):
                fm, px, ts, mask, index = encoded.batch(model, chunk, device)
                out = model.forward_fusion(fm, ts, mask, drop_image, drop_text, image_index=index, pixels=px)
                all_logits.append(out.logits.float().cpu())
        return torch.cat(all_logits)

    logits = torch.empty(len(order), len(model.config.labels))
    logits[order] = ctx.map_concat(len(chunks), run)
    return logits


def evaluate_model(
    model: MultimodalClassifier,
    examples: list[Example],
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> dict:
    """The classification report of ``model`` on labelled examples (unknown labels count as errors)."""
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    model = model.to(device)
    encoded = Encoded(model, examples, device, progress or (lambda event: None))
    logits = predict_encoded(model, encoded, device)
    labels = model.config.labels
    predicted = [labels[i] for i in logits.argmax(-1).tolist()]
    truth = [e.label for e in examples]
    all_labels = labels + sorted(set(truth) - set(labels))
    report = classification_report(truth, predicted, all_labels)
    # confidence as the Predictor reports it: softmax of logits / the fitted temperature
    confidences = (logits / model.config.temperature).softmax(-1).max(-1).values.tolist()
    report["reliability"] = reliability(confidences, [t == p for t, p in zip(truth, predicted)])
    report["ece"] = report["reliability"]["ece"]
    report["predictions"] = predicted
    report["confidences"] = confidences
    return report


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
    train_examples, val_examples = _split(dataset, val_dataset, val_fraction, settings.seed)
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
    train_enc = Encoded(model, train_examples, device, progress, ctx, should_stop)
    val_enc = Encoded(model, val_examples, device, progress, ctx, should_stop) if val_examples else None
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
            loop.stage2 = _agree_plan(ctx, _plan_stage2(settings, loop, prepare_seconds, left))
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
            if self.stage == 2:
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


def _plan_stage2(settings: TrainSettings, loop: _Loop, prepare_seconds: float, time_left: float | None) -> dict:
    """Whether stage 2 runs, for how many epochs, and why: only after stage 1 ended on its own
    (early stopping or its last epoch), and only when setting it up, ``stage2_patience`` + 1
    of its epochs and the final passes fit the time left. A stage-2 epoch is expected to take
    ``stage2_cost`` times a stage-1 epoch as measured on this machine in this run."""
    plan = {"stage": 2, "blocks": settings.stage2_blocks, "ran": False}
    stage1 = [h for h in loop.history if h.get("training_stage", 1) == 1 and h["complete"]]
    plan["first_epoch"] = (loop.history[-1]["epoch"] if loop.history else 0) + 1
    if loop.stopped or not stage1:
        return plan | {"why": "stage 1 was stopped (time limit or stop) before it ended on its own"}
    epoch_s = settings.stage2_cost * statistics.median(h["epoch_seconds"] for h in stage1)
    images = len(loop.train_enc.pixels) * settings.augment_views + (len(loop.val_enc.pixels) if loop.val_enc else 0)
    done = len(loop.train_enc.pixels) + (len(loop.val_enc.pixels) if loop.val_enc else 0)
    setup_s = prepare_seconds * images / max(1, done)  # encoding below the top blocks, per copy
    finish_s = prepare_seconds  # calibration, baselines, out-of-scope statistics after training
    plan["estimate"] = {"epoch_s": round(epoch_s, 1), "setup_s": round(setup_s, 1), "finish_s": round(finish_s, 1)}
    needed = settings.stage2_patience + 1
    if time_left is None:
        epochs = settings.stage2_epochs
    else:
        epochs = min(settings.stage2_epochs, int((time_left - setup_s - finish_s) / max(epoch_s, 1e-6)))
        plan["time_left_s"] = round(time_left, 1)
        if epochs < needed:
            return plan | {
                "why": f"{time_left:.0f} s left; stage 2 needs about {setup_s + finish_s + needed * epoch_s:.0f} s"
                f" ({setup_s:.0f} s to set up, {needed} epochs of about {epoch_s:.0f} s, {finish_s:.0f} s to finish)"
            }
    why = f"{epochs} epochs of about {epoch_s:.0f} s fit" + (
        " (no time limit)" if time_left is None else f" the {time_left:.0f} s left"
    )
    return plan | {"ran": True, "max_epochs": epochs, "why": why}


def _agree_plan(ctx: distributed.Context, plan: dict) -> dict:
    """Rank 0's stage-2 decision on every process (each planned from its own clock)."""
    if not ctx.distributed:
        return plan
    ran, epochs = ctx.sum([float(plan["ran"]), float(plan.get("max_epochs", 0))] if ctx.is_main else [0.0, 0.0])
    return plan | {"ran": bool(ran), "max_epochs": int(epochs)} if ran else plan | {"ran": False}


def stage_summaries(history: list[dict], stage2: dict | None, prepare_seconds: float) -> list[dict]:
    """Per stage: its epochs, wall time (setup + epochs), median training samples/s; stage 2
    also says why it ran or did not."""
    summaries = []
    for stage in (1, 2):
        epochs = [h for h in history if h.get("training_stage", 1) == stage]
        summary: dict = {"stage": stage}
        if stage == 2:
            if stage2 is None:
                break
            summary |= {k: v for k, v in stage2.items() if k not in ("stage", "first_epoch")}
        if epochs:
            setup = prepare_seconds if stage == 1 else stage2.get("setup_seconds", 0.0)
            rates = sorted(h["samples_per_s"] for h in epochs)
            summary |= {
                "epochs": [epochs[0]["epoch"], epochs[-1]["epoch"]],
                "seconds": round(setup + sum(h.get("epoch_seconds", 0.0) for h in epochs), 1),
                "samples_per_s": rates[len(rates) // 2],
                "best_val_accuracy": max(h.get("val_accuracy", h["train_accuracy"]) for h in epochs),
            }
        summaries.append(summary)
    return summaries


def _split(dataset, val_dataset, val_fraction, seed):
    if val_dataset is not None:
        return dataset.examples, val_dataset.examples
    return split_by_image(dataset.examples, val_fraction, seed)


def _class_weight(targets: torch.Tensor, n_labels: int, device: torch.device) -> torch.Tensor:
    """Inverse class frequency, normalised so a balanced set gets weights of 1."""
    counts = torch.bincount(targets, minlength=n_labels).float()
    return (counts.sum() / (n_labels * counts.clamp(min=1))).to(device)


def _adamw(groups: list[dict], weight_decay: float) -> torch.optim.AdamW:
    """AdamW with its fused kernel (one pass over all parameters, on the CPU as on a GPU):
    PyTorch's default on a CPU loops over the parameters one by one. Digits, frozen encoders,
    2 threads: 646-679 samples/s against 616-618."""
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
        drop_image, drop_text = _modality_dropout(len(batch), settings.modality_dropout, generator)
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


@torch.no_grad()
def modality_baselines(
    model, encoded: Encoded, targets: torch.Tensor, train_targets: torch.Tensor, device, ctx=distributed.SINGLE
) -> dict:
    """Validation accuracy of the majority class and of the model shown one modality only (the
    other masked as in modality dropout): what the multimodal model adds over each alone."""
    majority = int(torch.bincount(train_targets).argmax())
    result = {"majority": float((targets == majority).float().mean())}
    for name, drop in (("image_only", "text"), ("text_only", "image")):
        logits = predict_encoded(model, encoded, device, drop=drop, ctx=ctx)
        result[name] = float((logits.argmax(-1) == targets).float().mean())
    return result


def _trained_state(model: MultimodalClassifier, state: dict) -> dict[str, torch.Tensor]:
    """``state`` without what comes from the packages (frozen encoders but their tuned blocks)."""
    return {k: v.detach().cpu().clone() for k, v in state.items() if model.config.stores(k)}


def _load_trained(model: MultimodalClassifier, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and not any(model.config.stores(k) for k in missing), (missing, unexpected)


def _modality_dropout(n: int, p: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    u = torch.rand(n, generator=generator)
    return u < p / 2, (u >= p / 2) & (u < p)


def split_by_image(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Hold out ``fraction`` of the images (with all their rows) for validation."""
    images = sorted({e.image for e in examples})
    rng = random.Random(seed)
    rng.shuffle(images)
    n_val = max(1, round(len(images) * fraction)) if len(images) > 1 else 0
    val_images = set(images[:n_val])
    return [e for e in examples if e.image not in val_images], [e for e in examples if e.image in val_images]
