"""Fitting a checkpoint's out-of-scope statistics (what inference/scope.py assesses with)
after training, on the run's own training and validation rows.

- image: a Gaussian over the pooled image features of the training images and of benign
  re-encodings of them (``reencode``: JPEG, resizing, light blur, a screenshot's upscaling,
  border and colour shift), its covariance shrunk towards its mean eigenvalue (``SHRINK``) so
  that a small data set and a slightly different renderer do not blow it up. Threshold:
  ``IMAGE_MARGIN`` x the 99.5th percentile of the distances of the validation images and their
  re-encodings.
- text: the slots (``find_slots``) and vocabulary of the training texts, a bank of their
  pooled states, the input embeddings of the known words (for synonyms); the similarity and
  unseen-word limits allow what the validation texts needed.
- joint: the image-reliance floor from the validation rows (``reliance_floor``).

Rows are subsampled (``max_rows``, ``MAX_REENCODED_IMAGES``) so fitting a large set stays
short; the encoders run through the training engine's feature cache (features.py), one pass
per distinct image and text.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from safetensors.torch import save_file

from ..datasets.splits import train_val_split
from ..device import autocast, resolve_device
from ..imaging import decode_image
from ..inference.scope import (
    SCOPE_FILE,
    ScopeStats,
    embedding_table,
    mahalanobis,
    nearest_similarity,
    pooled_image,
    pooled_text,
    synonyms_for,
    text_problems,
    total_variation,
    word_vectors,
    words,
)
from ..model.encoders import load_tokenizer
from ..model.preprocess import image_to_uint8, normalize_pixels
from .features import Encoded

REENCODINGS_PER_IMAGE = 3  # benign re-encodings of each image fitted beside it
MAX_REENCODED_IMAGES = 500  # images re-encoded per split: bounds the fitting time of a large set
SHRINK = 0.1  # covariance shrinkage towards the mean eigenvalue
IMAGE_MARGIN = 1.5  # image threshold = margin x validation 99.5th percentile
MIN_SLOT_FILLERS = 3  # a slot is a position where at least this many words alternate
TEXT_SIMILARITY_FLOOR = 0.6  # at most this cosine is required of a text to its nearest training text
UNSEEN_FRACTION_LIMIT = 0.4  # at least this fraction of unseen words is allowed
RELIANCE_CAP = 0.02  # the image-reliance floor is at most this total variation distance
RELIANCE_FRACTION = 0.25  # ... and this fraction of the validation rows' 0.1st percentile
MAX_FIT_TEXTS = 2000  # training texts kept for the nearest-text check
MAX_VOCAB_VECTORS = 3000  # known words kept with their embeddings for the synonym check


# -- the statistics' files ---------------------------------------------------------------------
def save_scope(path: str | os.PathLike, stats: ScopeStats) -> None:
    """Write ``scope.safetensors`` and the ``scope`` block of config.json, each atomically;
    the weights are not touched."""
    path = Path(path)
    config_path = path / "config.json"
    data = json.loads(config_path.read_text())
    data["scope"] = stats.block()
    tmp = path / f".{SCOPE_FILE}.tmp"
    save_file(stats.tensors(), tmp, metadata={"format": "mmdemo-scope", "version": str(stats.version)})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path / SCOPE_FILE)
    write_config(path, data)


def write_config(path: Path, data: dict) -> None:
    """Replace a checkpoint's config.json atomically: a reader sees the old file or the new one."""
    tmp = path / ".config.json.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path / "config.json")


# -- statistics ------------------------------------------------------------------------------
def fit_gaussian(x: torch.Tensor, shrink: float = SHRINK) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and precision of (N, C) features, covariance shrunk towards its mean eigenvalue."""
    x = x.double()
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / max(1, len(x) - 1)
    target = cov.diagonal().mean().clamp(min=1e-8)
    cov = (1 - shrink) * cov + shrink * target * torch.eye(len(mean), dtype=cov.dtype)
    return mean.float(), torch.linalg.inv(cov).float()


def find_slots(texts: list[list[str]]) -> list[dict]:
    """Positions where at least MIN_SLOT_FILLERS words replace each other in otherwise identical
    texts; each slot with how many of its words a training text holds and the neighbours its
    words had (``""`` = start / end of the text)."""
    groups: dict[tuple, set[str]] = defaultdict(set)
    for ws in texts:
        for i, w in enumerate(ws):
            groups[(tuple(ws[:i]), tuple(ws[i + 1 :]))].add(w)
    fillers = [g for g in groups.values() if len(g) >= MIN_SLOT_FILLERS]
    # merge overlapping filler sets into classes
    classes: list[set[str]] = []
    for g in fillers:
        hits = [c for c in classes if c & g]
        merged = set(g).union(*hits)
        classes = [c for c in classes if not (c & g)] + [merged]
    slots = []
    for c in sorted(classes, key=lambda s: sorted(s)):
        counts, left, right = Counter(), set(), set()
        for ws in texts:
            counts[sum(w in c for w in ws)] += 1
            for i, w in enumerate(ws):
                if w in c:
                    left.add(ws[i - 1] if i > 0 else "")
                    right.add(ws[i + 1] if i + 1 < len(ws) else "")
        slots.append({"words": sorted(c), "counts": sorted(counts), "left": sorted(left), "right": sorted(right)})
    return slots


# -- benign re-encodings ---------------------------------------------------------------------
RESAMPLING = (Image.BILINEAR, Image.BICUBIC, Image.LANCZOS, Image.BOX, Image.HAMMING)


def reencode(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One random benign re-encoding of an RGB image, the way a copy of an in-scope image
    reaches the app: resized to 0.6-4x its side (one of PIL's smooth filters), lightly blurred
    (Gaussian radius 0.3-1.2), shot from a screen (gamma 0.85-1.15, gain 0.92-1, lift up to 4 %,
    maybe a thin grey border), saved as JPEG (quality 40-95). Each step is drawn on its own;
    at least one is applied."""
    image = image.convert("RGB")
    changed = False
    if rng.random() < 0.7:
        scale = float(np.exp(rng.uniform(np.log(0.6), np.log(4.0))))
        size = (max(8, round(image.width * scale)), max(8, round(image.height * scale)))
        image, changed = image.resize(size, RESAMPLING[int(rng.integers(len(RESAMPLING)))]), True
    if rng.random() < 0.3:
        image, changed = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2)))), True
    if rng.random() < 0.25:
        a = np.asarray(image, dtype=np.float32) / 255
        a = np.clip(a ** rng.uniform(0.85, 1.15) * rng.uniform(0.92, 1.0) + rng.uniform(0, 0.04), 0, 1)
        image, changed = Image.fromarray((a * 255).round().astype(np.uint8)), True
        if rng.random() < 0.5:
            width, grey = int(rng.integers(1, 5)), int(rng.integers(150, 256))
            framed = Image.new("RGB", (image.width + 2 * width, image.height + 2 * width), (grey,) * 3)
            framed.paste(image, (width, width))
            image = framed
    if rng.random() < 0.75 or not changed:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(40, 96)))
        image = Image.open(buffer).convert("RGB")
    return image


@torch.no_grad()
def reencoded_image_vecs(
    model,
    images: list,
    seed: int,
    device: torch.device | str = "cpu",
    per_image: int = REENCODINGS_PER_IMAGE,
    max_images: int = MAX_REENCODED_IMAGES,
    batch_size: int = 64,
) -> torch.Tensor:
    """(n * per_image, 2C) pooled image-encoder features of ``per_image`` re-encodings
    (``reencode``) of each of ``images`` (files), at most ``max_images`` of them."""
    rng = np.random.default_rng(seed)
    if len(images) > max_images:
        images = [images[i] for i in sorted(rng.choice(len(images), max_images, replace=False))]
    device = torch.device(device)
    model = model.to(device).eval()
    config = model.config
    vecs, pending = [], []

    def encode() -> None:
        pixels = normalize_pixels(torch.stack(pending), config).to(device)
        with autocast(device):
            vecs.append(pooled_image(model.encode_image(pixels)).cpu())
        pending.clear()

    for path in images:
        image = decode_image(path)
        pending.extend(image_to_uint8(reencode(image, rng), config) for _ in range(per_image))
        if len(pending) >= batch_size:
            encode()
    if pending:
        encode()
    return torch.cat(vecs) if vecs else torch.zeros(0, 0)


# -- fitting -----------------------------------------------------------------------------------
@dataclass
class Encodings:
    """Per distinct image and per distinct text of some rows, and per row the answer
    distribution with the image and with the image masked out."""

    image_vecs: torch.Tensor  # (N_img, C)
    text_vecs: torch.Tensor  # (N_txt, E)
    texts: list[str]
    logits: torch.Tensor  # (N_rows, L)
    text_only_logits: torch.Tensor  # (N_rows, L)


@torch.no_grad()
def encode_rows(
    model, examples: list, device: torch.device | str = "cpu", batch_size: int = 256, with_logits: bool = True
) -> Encodings:
    """Encode labelled examples (datasets.csv_table.Example) the way prediction does;
    ``with_logits=False`` skips the fusion (only the pooled encoder outputs are needed of
    training rows)."""
    device = torch.device(device)
    model = model.to(device).eval()
    encoded = Encoded(model, examples, device, lambda event: None)
    image_vecs = torch.zeros(len(encoded.image_index), 0)
    text_vecs = torch.zeros(len(encoded.text_index), 0)
    logits, text_only = [], []
    order = torch.argsort(encoded.rows_image, stable=True)
    for chunk in order.split(batch_size):
        fm, px, ts, mask, index = encoded.batch(model, chunk, device)
        img_ids = torch.unique(encoded.rows_image[chunk])
        pooled = pooled_image(fm).cpu()
        if image_vecs.shape[1] == 0:
            image_vecs = torch.zeros(len(encoded.image_index), pooled.shape[1])
            text_vecs = torch.zeros(len(encoded.text_index), ts.shape[-1])
        image_vecs[img_ids] = pooled
        text_vecs[encoded.rows_text[chunk]] = pooled_text(ts, mask).cpu()
        if not with_logits:
            continue
        drop = torch.ones(len(chunk), dtype=torch.bool, device=device)
        logits.append(model.forward_fusion(fm, ts, mask, image_index=index, pixels=px).logits.float().cpu())
        text_only.append(
            model.forward_fusion(fm, ts, mask, drop_image=drop, image_index=index, pixels=px).logits.float().cpu()
        )
    all_logits = torch.empty(len(order) if with_logits else 0, len(model.config.labels))
    all_text_only = torch.empty_like(all_logits)
    if with_logits:
        all_logits[order], all_text_only[order] = torch.cat(logits), torch.cat(text_only)
    return Encodings(image_vecs, text_vecs, list(encoded.text_index), all_logits, all_text_only)


def reliance_floor(val: Encodings, temperature: float) -> float:
    """The image-reliance floor from validation rows: answers that move less than this when the
    image is masked out are said to ignore the image."""
    t = temperature
    reliance = total_variation((val.logits / t).softmax(-1), (val.text_only_logits / t).softmax(-1))
    return min(RELIANCE_CAP, RELIANCE_FRACTION * float(torch.quantile(reliance, 0.001)))


def sample_rows(examples: list, max_rows: int, seed: int = 0) -> list:
    """At most ``max_rows`` of ``examples``, in their order; the same seed draws the same rows
    (``fit-scope`` finds the validation rows ``fit_scope`` encoded this way)."""
    if len(examples) <= max_rows:
        return list(examples)
    keep = np.random.default_rng(seed).choice(len(examples), max_rows, replace=False)
    return [examples[i] for i in sorted(keep)]


def fit_scope(
    model,
    train_examples: list,
    val_examples: list,
    device: torch.device | str = "cpu",
    tokenizer=None,
    max_rows: int = 4000,
    seed: int = 0,
) -> tuple[ScopeStats, Encodings]:
    """Statistics of the training rows, thresholds from the validation rows (both subsampled
    to ``max_rows``); also returns the validation encodings (for temperature fitting)."""
    tokenizer = tokenizer or load_tokenizer(model.config.text_model)
    train_rows, val_rows = sample_rows(train_examples, max_rows, seed), sample_rows(val_examples, max_rows, seed + 1)
    train = encode_rows(model, train_rows, device, with_logits=False)
    val = encode_rows(model, val_rows, device)
    # the images as given and re-encoded: a JPEG, resized or screenshot copy of a training
    # image is in scope, and the threshold allows what the validation images' copies need
    train_images = list(dict.fromkeys(e.image for e in train_rows))
    val_images = list(dict.fromkeys(e.image for e in val_rows))
    train_reencoded = reencoded_image_vecs(model, train_images, seed, device)
    val_reencoded = reencoded_image_vecs(model, val_images, seed + 1, device)
    mean, precision = fit_gaussian(torch.cat([train.image_vecs, train_reencoded]))
    val_distance = mahalanobis(torch.cat([val.image_vecs, val_reencoded]), mean, precision)

    bank = train.text_vecs
    if len(bank) > MAX_FIT_TEXTS:
        bank = bank[torch.from_numpy(np.random.default_rng(seed).choice(len(bank), MAX_FIT_TEXTS, replace=False))]
    all_words = [words(t) for t in [e.text for e in train_examples]]
    counts = Counter(w for ws in all_words for w in ws)
    vocabulary = [w for w, _ in counts.most_common()]
    label_words = sorted({w for label in model.config.labels for w in words(label)})
    table = embedding_table(model.text_encoder, tokenizer.vocab_size)
    vocab_vectors = (
        word_vectors(table, tokenizer, vocabulary[:MAX_VOCAB_VECTORS]) if table is not None else torch.zeros(0, 1)
    )
    stats = ScopeStats(
        image_mean=mean,
        image_precision=precision,
        text_bank=bank,
        vocab_vectors=vocab_vectors,
        vocabulary=vocabulary,
        label_words=label_words,
        slots=find_slots(sorted({tuple(ws) for ws in all_words}, key=lambda ws: " ".join(ws))),
        image_threshold=IMAGE_MARGIN * float(torch.quantile(val_distance, 0.995)),
        text_similarity_floor=TEXT_SIMILARITY_FLOOR,
        unseen_fraction_limit=UNSEEN_FRACTION_LIMIT,
        reliance_floor=RELIANCE_CAP,
        fitted_on={"train_rows": min(len(train_examples), max_rows), "val_rows": min(len(val_examples), max_rows)},
    )
    # text limits from the validation texts: new texts of a real data set are allowed what its
    # own validation texts needed (Sort-of-CLEVR's validation reuses the training wordings, so
    # the defaults hold there)
    val_similarity = nearest_similarity(val.text_vecs, bank)
    val_unseen = []
    for text in val.texts:
        ws = words(text)
        unseen, _, fraction = text_problems(ws, stats, synonyms_for(ws, stats, table, tokenizer))
        val_unseen.append(fraction)
    stats.text_similarity_floor = min(TEXT_SIMILARITY_FLOOR, float(torch.quantile(val_similarity, 0.01)) - 0.05)
    stats.unseen_fraction_limit = max(UNSEEN_FRACTION_LIMIT, float(np.quantile(val_unseen, 0.99)) + 0.1)
    stats.reliance_floor = reliance_floor(val, model.config.temperature)
    stats.fitted_on.update(
        {
            "images": len(train.image_vecs),
            "texts": len(train.text_vecs),
            "val_images": len(val.image_vecs),
            "val_texts": len(val.texts),
            "reencoded_images": len(train_reencoded),
            "val_reencoded_images": len(val_reencoded),
            "val_image_distance_p995": round(float(torch.quantile(val_distance, 0.995)), 4),
        }
    )
    return stats, val


def fit_and_save(path, model, dataset, val_dataset, val_fraction: float, seed: int, device=None) -> ScopeStats:
    """After fine-tuning: fit the statistics on the run's own training / validation split and
    store them beside the weights (the one call finetune.py makes)."""
    train_examples, val_examples = train_val_split(dataset, val_dataset, val_fraction, seed)
    stats, _ = fit_scope(model, train_examples, val_examples or train_examples, resolve_device(device))
    save_scope(path, stats)
    return stats
