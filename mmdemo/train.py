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
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from .data import Dataset, Example
from .device import autocast, resolve_device
from .encoders import load_tokenizer
from .imaging import decode_image
from .metrics import classification_report, reliability
from .model import PARTS, ModelConfig, MultimodalClassifier, build_model
from .preprocess import image_to_uint8, normalize_pixels, tokenize

Progress = Callable[[dict], None]


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
        should_stop: Callable[[], bool] | None = None,
    ):
        config = model.config
        stop = should_stop or (lambda: False)

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

        images = []
        for i, path in enumerate(self.image_index, start=1):
            images.append(image_to_uint8(decode_image(path), config))
            if i % 200 == 0 or i == len(self.image_index):
                step("load images", i, len(self.image_index))
        self.pixels = torch.stack(images)  # (N_img, 3, S, S) uint8
        texts = list(self.text_index)
        self.input_ids, self.attention_mask = _tokenize_in_chunks(texts, config, step)  # (N_txt, T)

        self.features = self.text_states = None
        model.eval()
        with torch.no_grad(), autocast(device):
            if "image_encoder" in config.frozen:
                chunks = []
                for start in range(0, len(self.pixels), 64):
                    px = normalize_pixels(self.pixels[start : start + 64], config).to(device)
                    chunks.append(model.encode_image(px).float().cpu())
                    step("encode images", start + len(px), len(self.pixels))
                self.features = torch.cat(chunks)  # (N_img, C, h, w)
            if "text_encoder" in config.frozen:
                chunks = []
                for start in range(0, len(texts), ENCODE_CHUNK):
                    ids = self.input_ids[start : start + ENCODE_CHUNK].to(device)
                    mask = self.attention_mask[start : start + ENCODE_CHUNK].to(device)
                    chunks.append(model.encode_text(ids, mask).float().cpu())
                    step("encode texts", start + len(ids), len(texts))
                self.text_states = torch.cat(chunks)  # (N_txt, T, E)

    def batch(self, model: MultimodalClassifier, rows: torch.Tensor, device: torch.device):
        """Feature maps, text states and mask for the given rows; trained encoders run here."""
        config = model.config
        img_ids, img_inverse = torch.unique(self.rows_image[rows], return_inverse=True)
        px = normalize_pixels(self.pixels[img_ids], config).to(device).contiguous(memory_format=torch.channels_last)
        if self.features is not None:
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
) -> torch.Tensor:
    """(N, L) logits of every row, in row order; ``drop`` "image" or "text" masks that modality."""
    model.eval()
    all_logits = []
    # group by image so trained image encoders still run once per image
    order = torch.argsort(encoded.rows_image, stable=True)
    for chunk in order.split(batch_size):
        masked = torch.full((len(chunk),), True, device=device)
        drop_image = masked if drop == "image" else None
        drop_text = masked if drop == "text" else None
        with autocast(device):
            fm, px, ts, mask, index = encoded.batch(model, chunk, device)
            out = model.forward_fusion(fm, ts, mask, drop_image, drop_text, image_index=index, pixels=px)
            all_logits.append(out.logits.float().cpu())
    logits = torch.empty(len(order), len(model.config.labels))
    logits[order] = torch.cat(all_logits)
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
) -> TrainResult:
    """Train on ``dataset``; validate on ``val_dataset`` or on a ``val_fraction`` split of it
    (split by image, so no image is in both). ``on_best(model, record)`` is called whenever an
    epoch beats the best so far (finetune saves a checkpoint there, so a stopped run keeps its
    best epoch); ``on_epoch(state)`` after every complete epoch with what ``resume`` takes to
    continue from there."""
    progress = progress or (lambda event: None)
    should_stop = should_stop or (lambda: False)
    start_time = time.perf_counter()
    seed_everything(settings.seed)
    device = resolve_device(settings.device)
    if device.type == "cpu" and settings.cpu_threads:
        torch.set_num_threads(settings.cpu_threads)
    train_examples, val_examples = _split(dataset, val_dataset, val_fraction, settings.seed)
    labels = sorted({e.label for e in train_examples} | {e.label for e in val_examples})
    if len(labels) < 2:
        raise ValueError(f"training needs at least 2 classes, found {labels}")

    model = model_for(labels, init, config)
    model.set_frozen(settings.freeze)
    model.to(device)
    label_index = {label: i for i, label in enumerate(model.config.labels)}
    progress({"stage": "prepare", "message": f"preparing {len(train_examples)} training rows"})
    train_enc = Encoded(model, train_examples, device, progress, should_stop)
    val_enc = Encoded(model, val_examples, device, progress, should_stop) if val_examples else None
    targets = torch.tensor([label_index[e.label] for e in train_examples])
    val_targets = torch.tensor([label_index.get(e.label, -1) for e in val_examples])
    prepare_seconds = time.perf_counter() - start_time

    weight = _class_weight(targets, len(label_index), device) if settings.class_weights else None
    optimizer, scheduler, trained_params = _optimizer(model, settings, math.ceil(len(targets) / settings.batch_size))
    generator = torch.Generator().manual_seed(settings.seed)
    best = {"score": None, "epoch": 0, "metrics": {}}
    best_model, history, stale, first_epoch = None, [], 0, 1
    if resume is not None:
        first_epoch, best, history, stale = resume.epoch + 1, resume.best, list(resume.history), resume.stale_epochs
        best_model = resume.best_model
        _load_trained(model, resume.model)
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        generator.set_state(resume.generator)
        torch.set_rng_state(resume.torch_rng)

    for epoch in range(first_epoch, settings.epochs + 1):
        epoch_start = time.perf_counter()
        loss, correct, seen = _train_epoch(
            model, train_enc, targets, weight, optimizer, scheduler, trained_params, generator, settings, device,
            should_stop, progress, epoch,
        )  # fmt: skip
        if seen == 0:
            break
        record = {
            "epoch": epoch,
            "train_loss": loss,
            "train_accuracy": correct / seen,
            "complete": seen == len(targets),  # False: cut short by a stop or the time limit
            "samples_per_s": round(seen / (time.perf_counter() - epoch_start), 1),
        }
        report, score = _validate(model, val_enc, val_targets, device, record)
        record["seconds"] = round(time.perf_counter() - start_time, 1)
        history.append(record)
        if best["score"] is None or score > tuple(best["score"]):
            best, stale = {"score": list(score), "epoch": epoch, "metrics": {**record, "report": report}}, 0
            best_model = _trained_state(model, model.state_dict())
            if on_best is not None:
                on_best(model, record)
                model.train()
        else:
            stale += 1
        progress({"stage": "epoch", **record})
        if on_epoch is not None and record["complete"]:
            on_epoch(_state(epoch, model, optimizer, scheduler, generator, best, best_model, history, stale))
        if should_stop() or (settings.patience is not None and stale >= settings.patience):
            break
    if best_model is not None:
        _load_trained(model, best_model)
    model.eval()
    result = TrainResult(
        model, best["epoch"], best["metrics"], history, time.perf_counter() - start_time,
        stopped_early=settings.patience is not None and stale >= settings.patience,
    )  # fmt: skip
    result.best_metrics["prepare_seconds"] = round(prepare_seconds, 1)
    if val_enc is not None and history:
        result.val_logits, result.val_targets = predict_encoded(model, val_enc, device), val_targets
        result.baselines = modality_baselines(model, val_enc, val_targets, targets, device)
    result.model = model.cpu()
    return result


def _split(dataset, val_dataset, val_fraction, seed):
    if val_dataset is not None:
        return dataset.examples, val_dataset.examples
    return split_by_image(dataset.examples, val_fraction, seed)


def _class_weight(targets: torch.Tensor, n_labels: int, device: torch.device) -> torch.Tensor:
    """Inverse class frequency, normalised so a balanced set gets weights of 1."""
    counts = torch.bincount(targets, minlength=n_labels).float()
    return (counts.sum() / (n_labels * counts.clamp(min=1))).to(device)


def _optimizer(model: MultimodalClassifier, settings: TrainSettings, steps_per_epoch: int):
    """AdamW with the encoders' own learning rate, warm-up then cosine decay over all epochs."""
    encoder_params = [p for part in PARTS if part not in settings.freeze for p in getattr(model, part).parameters()]
    head_params = list(model.fusion.parameters()) + list(model.head.parameters())
    groups = [{"params": head_params, "lr": settings.lr}]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": settings.encoder_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
    total_steps = steps_per_epoch * settings.epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, int(settings.warmup * total_steps)), total_steps)
    return optimizer, scheduler, head_params + encoder_params


def _train_epoch(
    model, encoded, targets, weight, optimizer, scheduler, params, generator, settings, device, should_stop, progress,
    epoch,
) -> tuple[float, int, int]:  # fmt: skip
    """One pass over the training rows (until ``should_stop``): mean loss, rows right, rows seen."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    batches = grouped_batches(encoded.rows_image, settings.batch_size, generator)
    for i, rows in enumerate(batches):
        if should_stop():
            break
        y = targets[rows].to(device)
        drop_image, drop_text = _modality_dropout(len(rows), settings.modality_dropout, generator)
        with autocast(device):
            fm, px, ts, mask, index = encoded.batch(model, rows, device)
            out = model.forward_fusion(fm, ts, mask, drop_image.to(device), drop_text.to(device), index, px)
            loss = F.cross_entropy(out.logits.float(), y, weight=weight, label_smoothing=settings.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip:
            nn.utils.clip_grad_norm_(params, settings.grad_clip)
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(rows)
        correct += int((out.logits.argmax(-1) == y).sum())
        seen += len(rows)
        progress(
            {
                "stage": "train",
                "epoch": epoch,
                "epochs": settings.epochs,
                "step": i + 1,
                "steps": len(batches),
                "loss": total_loss / seen,
            }
        )
    return total_loss / max(1, seen), correct, seen


def _validate(model, encoded, targets, device, record) -> tuple[dict, tuple]:
    """Adds validation loss, accuracy and macro F1 to ``record``; returns the report and the
    score epochs are ranked by (accuracy, then lower loss)."""
    if encoded is None:
        return {}, (record["train_accuracy"], -record["train_loss"])
    logits = predict_encoded(model, encoded, device)
    known = targets >= 0
    record["val_loss"] = float(F.cross_entropy(logits[known], targets[known])) if known.any() else float("nan")
    report = _report(model.config.labels, logits, targets, encoded.labels)
    record["val_accuracy"], record["val_macro_f1"] = report["accuracy"], report["macro_f1"]
    return report, (report["accuracy"], -record["val_loss"])


def _report(labels: list[str], logits: torch.Tensor, targets: torch.Tensor, truth: list[str]) -> dict:
    predicted = [labels[j] for j in logits.argmax(-1).tolist()]
    return classification_report(truth, predicted, labels + sorted(set(truth) - set(labels)))


@torch.no_grad()
def modality_baselines(model, encoded: Encoded, targets: torch.Tensor, train_targets: torch.Tensor, device) -> dict:
    """Validation accuracy of the majority class and of the model shown one modality only (the
    other masked as in modality dropout): what the multimodal model adds over each alone."""
    majority = int(torch.bincount(train_targets).argmax())
    result = {"majority": float((targets == majority).float().mean())}
    for name, drop in (("image_only", "text"), ("text_only", "image")):
        logits = predict_encoded(model, encoded, device, drop=drop)
        result[name] = float((logits.argmax(-1) == targets).float().mean())
    return result


def _trained_state(model: MultimodalClassifier, state: dict) -> dict[str, torch.Tensor]:
    """``state`` without the frozen encoders whose weights come from their packages."""
    skip = tuple(f"{part}." for part in model.config.referenced_parts())
    return {k: v.detach().cpu().clone() for k, v in state.items() if not k.startswith(skip)}


def _load_trained(model: MultimodalClassifier, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    skip = tuple(f"{part}." for part in model.config.referenced_parts())
    assert not unexpected and all(k.startswith(skip) for k in missing), (missing, unexpected)


def _state(epoch, model, optimizer, scheduler, generator, best, best_model, history, stale) -> TrainState:
    return TrainState(
        epoch=epoch,
        model=_trained_state(model, model.state_dict()),
        optimizer=copy.deepcopy(optimizer.state_dict()),
        scheduler=scheduler.state_dict(),
        generator=generator.get_state(),
        torch_rng=torch.get_rng_state(),
        best=copy.deepcopy(best),
        best_model=_trained_state(model, best_model),
        history=list(history),
        stale_epochs=stale,
    )


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
