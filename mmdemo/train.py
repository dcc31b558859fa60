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

from .data import Dataset, Example
from .device import autocast, resolve_device
from .encoders import load_tokenizer
from .imaging import decode_image
from .metrics import classification_report
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
    seed: int = 0
    device: str | None = None


@dataclass
class TrainResult:
    model: MultimodalClassifier  # holds the best epoch's weights
    best_epoch: int
    best_metrics: dict
    history: list[dict]
    seconds: float


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


class Encoded:
    """The inputs of a dataset prepared once: uint8 images per distinct image, token ids per
    distinct text, and encoder outputs for frozen encoders."""

    def __init__(self, model: MultimodalClassifier, examples: list[Example], device: torch.device, progress: Progress):
        config = model.config
        self.image_index: dict = {}
        self.text_index: dict = {}
        for e in examples:
            self.image_index.setdefault(e.image, len(self.image_index))
            self.text_index.setdefault(e.text, len(self.text_index))
        self.rows_image = torch.tensor([self.image_index[e.image] for e in examples])
        self.rows_text = torch.tensor([self.text_index[e.text] for e in examples])

        images = []
        for i, path in enumerate(self.image_index):
            images.append(image_to_uint8(decode_image(path), config))
            if i % 200 == 0:
                progress({"stage": "load images", "done": i, "total": len(self.image_index)})
        self.pixels = torch.stack(images)  # (N_img, 3, S, S) uint8
        texts = list(self.text_index)
        tb = tokenize(load_tokenizer(config.text_model), texts, config.max_tokens)
        self.input_ids, self.attention_mask = tb.input_ids, tb.attention_mask  # (N_txt, T)

        self.features = self.text_states = None
        model.eval()
        with torch.no_grad(), autocast(device):
            if "image_encoder" in config.frozen:
                chunks = []
                for start in range(0, len(self.pixels), 64):
                    px = normalize_pixels(self.pixels[start : start + 64], config).to(device)
                    chunks.append(model.encode_image(px).float().cpu())
                    progress({"stage": "encode images", "done": start + len(px), "total": len(self.pixels)})
                self.features = torch.cat(chunks)  # (N_img, C, h, w)
            if "text_encoder" in config.frozen:
                chunks = []
                for start in range(0, len(texts), 256):
                    ids = self.input_ids[start : start + 256].to(device)
                    mask = self.attention_mask[start : start + 256].to(device)
                    chunks.append(model.encode_text(ids, mask).float().cpu())
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


def grouped_batches(rows_image: torch.Tensor, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Row batches in a random order that keeps the rows of one image together."""
    # shuffle the rows, then stable-sort them by a random rank of their image
    shuffled = torch.randperm(len(rows_image), generator=generator)
    rank = torch.randperm(int(rows_image.max()) + 1, generator=generator)
    order = shuffled[torch.argsort(rank[rows_image[shuffled]], stable=True)]
    return list(order.split(batch_size))


@torch.no_grad()
def predict_encoded(
    model: MultimodalClassifier, encoded: Encoded, device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """(N, L) logits of every row, in row order."""
    model.eval()
    all_logits = []
    # group by image so trained image encoders still run once per image
    order = torch.argsort(encoded.rows_image, stable=True)
    for chunk in order.split(batch_size):
        with autocast(device):
            fm, px, ts, mask, index = encoded.batch(model, chunk, device)
            all_logits.append(model.forward_fusion(fm, ts, mask, image_index=index, pixels=px).logits.float().cpu())
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
    report["predictions"] = predicted
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
) -> TrainResult:
    """Train on ``dataset``; validate on ``val_dataset`` or on a ``val_fraction`` split of it
    (split by image, so no image is in both). ``on_best(model, record)`` is called whenever an
    epoch beats the best so far (the CLI saves a checkpoint there, so a long run that is
    stopped keeps its best epoch)."""
    progress = progress or (lambda event: None)
    should_stop = should_stop or (lambda: False)
    start_time = time.perf_counter()
    seed_everything(settings.seed)
    device = resolve_device(settings.device)

    train_examples = dataset.examples
    if val_dataset is not None:
        val_examples = val_dataset.examples
    else:
        train_examples, val_examples = split_by_image(dataset.examples, val_fraction, settings.seed)
    labels = sorted({e.label for e in train_examples} | {e.label for e in val_examples})
    if len(labels) < 2:
        raise ValueError(f"training needs at least 2 classes, found {labels}")

    model = model_for(labels, init, config)
    model.set_frozen(settings.freeze)
    model.to(device)
    labels = model.config.labels
    label_index = {label: i for i, label in enumerate(labels)}

    progress({"stage": "prepare", "message": f"preparing {len(train_examples)} training rows"})
    train_enc = Encoded(model, train_examples, device, progress)
    val_enc = Encoded(model, val_examples, device, progress) if val_examples else None
    targets = torch.tensor([label_index[e.label] for e in train_examples])
    val_targets = [e.label for e in val_examples]

    weight = None
    if settings.class_weights:
        counts = torch.bincount(targets, minlength=len(labels)).float()
        weight = (counts.sum() / (len(labels) * counts.clamp(min=1))).to(device)

    encoder_params = [p for part in PARTS if part not in settings.freeze for p in getattr(model, part).parameters()]
    head_params = list(model.fusion.parameters()) + list(model.head.parameters())
    groups = [{"params": head_params, "lr": settings.lr}]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": settings.encoder_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
    generator = torch.Generator().manual_seed(settings.seed)
    steps_per_epoch = math.ceil(len(train_examples) / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    warmup = max(1, int(settings.warmup * total_steps))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    history: list[dict] = []
    best_score, best_epoch, best_state, best_metrics = None, 0, None, {}
    step = 0
    for epoch in range(1, settings.epochs + 1):
        model.train()
        total_loss, total_correct, seen = 0.0, 0, 0
        batches = grouped_batches(train_enc.rows_image, settings.batch_size, generator)
        for i, rows in enumerate(batches):
            if should_stop():
                break
            y = targets[rows].to(device)
            drop_image, drop_text = _modality_dropout(len(rows), settings.modality_dropout, generator)
            with autocast(device):
                fm, px, ts, mask, index = train_enc.batch(model, rows, device)
                out = model.forward_fusion(fm, ts, mask, drop_image.to(device), drop_text.to(device), index, px)
                loss = F.cross_entropy(out.logits.float(), y, weight=weight, label_smoothing=settings.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip:
                nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], settings.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            total_loss += loss.item() * len(rows)
            total_correct += int((out.logits.argmax(-1) == y).sum())
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
        if seen == 0:
            break
        record = {
            "epoch": epoch,
            "train_loss": total_loss / seen,
            "train_accuracy": total_correct / seen,
            "complete": seen == len(train_examples),  # False: cut short by a stop or the time limit
        }
        if val_enc is not None:
            logits = predict_encoded(model, val_enc, device)
            val_y = torch.tensor([label_index.get(t, -1) for t in val_targets])
            known = val_y >= 0
            record["val_loss"] = float(F.cross_entropy(logits[known], val_y[known])) if known.any() else float("nan")
            predicted = [labels[j] for j in logits.argmax(-1).tolist()]
            report = classification_report(val_targets, predicted, labels + sorted(set(val_targets) - set(labels)))
            record["val_accuracy"] = report["accuracy"]
            record["val_macro_f1"] = report["macro_f1"]
            score = (report["accuracy"], -record["val_loss"])
        else:
            report, score = {}, (record["train_accuracy"], -record["train_loss"])
        record["seconds"] = round(time.perf_counter() - start_time, 1)
        history.append(record)
        if best_score is None or score > best_score:
            best_score, best_epoch, best_metrics = score, epoch, {**record, "report": report}
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if on_best is not None:
                on_best(model, record)
                model.train()
        progress({"stage": "epoch", **record})
        if should_stop():
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model.cpu(), best_epoch, best_metrics, history, time.perf_counter() - start_time)


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
