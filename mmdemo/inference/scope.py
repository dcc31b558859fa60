"""Out-of-scope detection: how far an input is from what the model was trained on.

A checkpoint may carry ``scope.safetensors`` (tensors) and a ``scope`` block in config.json
(words, thresholds, what the statistics were fitted on). Every prediction is assessed with
three checks; it is ``in_scope`` only when all pass:

- image: Mahalanobis distance of the image-encoder features pooled over regions (their mean
  and standard deviation: how the regions differ tells a scene of objects from a blank page)
  to a Gaussian fitted on the training images and on benign re-encodings of them (``reencode``:
  JPEG, resizing, light blur, a screenshot's upscaling, border and colour shift), so that a
  phone photo or a screenshot of an in-scope image stays in scope while a real photo does not.
  Shared covariance shrunk towards its mean eigenvalue, so that a small data set and a slightly
  different renderer do not blow it up. Threshold: ``IMAGE_MARGIN`` x the 99.5th percentile of
  the distances of the validation images and their re-encodings
  (``python -m mmdemo bench-scope`` prints the flag rate of each re-encoding).
- text: evidence at word level, because a sentence embedding places "What shape is the
  purple object?" as close to the training questions as a new wording of them:
  * slot words, found from the training texts alone: words that replace each other in
    otherwise identical texts ("red" / "green" / ... in "What shape is the {c} object?").
    Every training text holds a fixed number of them; a text with another number (an unknown
    colour: none; a question about two objects: two) is flagged, and so is a slot word in a
    context it never had ("How many red objects ..." where training always said "red object").
  * an unseen word counts as a known one when its input embedding is almost the same
    (cosine >= ``SYNONYM_COS``: "grey" -> "gray"); label words ("circle") count as seen.
  * the fraction of unseen words, and the cosine similarity of the mean-pooled text states to
    the nearest training text, each against a limit set on the validation texts.
- joint: how much the answer depends on the image, as the total variation distance between
  the answer distribution with the image and with the image masked out (the model was trained
  with modality dropout, so "text only" is a mode it knows). An answer that stays the same
  without the image ignores the image.

A checkpoint without statistics still predicts: ``in_scope`` is then true and the scope block
says ``"fitted": false`` (nothing was measured, so nothing is claimed).

Also here, until the training side's calibration module lands: temperature fitting and the
expected calibration error (15 equal-width bins).
"""

from __future__ import annotations

import io
import json
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..device import autocast
from ..imaging import decode_image
from ..model.preprocess import image_to_uint8, normalize_pixels

SCOPE_FILE = "scope.safetensors"
SCOPE_VERSION = 2
# what each version's image statistics were fitted on: 1 the mean over regions of the original
# images only (older fine-tunes, still read), 2 the mean and standard deviation over regions
# of the original images and their re-encodings
IMAGE_POOLING = {1: "mean", 2: "mean+std"}
REENCODINGS_PER_IMAGE = 3  # benign re-encodings of each image fitted beside it
MAX_REENCODED_IMAGES = 500  # images re-encoded per split: bounds the fitting time of a large set
SHRINK = 0.1  # covariance shrinkage towards the mean eigenvalue
IMAGE_MARGIN = 1.5  # image threshold = margin x validation 99.5th percentile
SYNONYM_COS = 0.75  # input-embedding cosine at which an unseen word stands for a known one
MIN_SLOT_FILLERS = 3  # a slot is a position where at least this many words alternate
TEXT_SIMILARITY_FLOOR = 0.6  # at most this cosine is required of a text to its nearest training text
UNSEEN_FRACTION_LIMIT = 0.4  # at least this fraction of unseen words is allowed
RELIANCE_CAP = 0.02  # the image-reliance floor is at most this total variation distance
RELIANCE_FRACTION = 0.25  # ... and this fraction of the validation rows' 0.1st percentile
MAX_FIT_TEXTS = 2000  # training texts kept for the nearest-text check
MAX_VOCAB_VECTORS = 3000  # known words kept with their embeddings for the synonym check

MESSAGES = {
    "image": "this image does not look like the training data",
    "text": "this question is unlike the training questions",
    "ignores_image": "the answer ignores the image",
}

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-cased words (letters and digits) of a text."""
    return _WORD.findall(text.lower())


# -- statistics ----------------------------------------------------------------------------
@dataclass
class ScopeStats:
    image_mean: torch.Tensor  # (C,)
    image_precision: torch.Tensor  # (C, C)
    text_bank: torch.Tensor  # (N, E) unit-norm mean-pooled text states of training texts
    vocab_vectors: torch.Tensor  # (V, E') unit-norm input embeddings of vocabulary[:V]
    vocabulary: list[str]  # every word of the training texts, most frequent first
    label_words: list[str]
    slots: list[dict]  # {"words": [...], "counts": [...], "left": [...], "right": [...]}
    image_threshold: float
    text_similarity_floor: float
    unseen_fraction_limit: float
    reliance_floor: float
    fitted_on: dict = field(default_factory=dict)
    version: int = SCOPE_VERSION  # which image statistic (IMAGE_POOLING)

    def block(self) -> dict:
        """The JSON part, stored as ``scope`` in config.json."""
        return {
            "version": self.version,
            "file": SCOPE_FILE,
            "vocabulary": self.vocabulary,
            "label_words": self.label_words,
            "slots": self.slots,
            "image_threshold": round(self.image_threshold, 4),
            "text_similarity_floor": round(self.text_similarity_floor, 4),
            "unseen_fraction_limit": round(self.unseen_fraction_limit, 4),
            "reliance_floor": round(self.reliance_floor, 4),
            "fitted_on": self.fitted_on,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "image_mean": self.image_mean.float().contiguous(),
            "image_precision": self.image_precision.float().contiguous(),
            "text_bank": self.text_bank.half().contiguous(),
            "vocab_vectors": self.vocab_vectors.half().contiguous(),
        }


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
    tmp = path / ".config.json.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path / "config.json")


BLOCK_FIELDS = (
    "vocabulary", "label_words", "slots", "image_threshold", "text_similarity_floor", "unseen_fraction_limit",
    "reliance_floor",
)  # fmt: skip


def load_scope(path: str | os.PathLike) -> ScopeStats | None:
    """The checkpoint's statistics, or None when it has none. A ``scope`` block without its
    tensors (or the reverse) is an error, not a silent "in scope". Every error names the file
    by its name within the checkpoint (a visitor sees it; a server path is not theirs to see)."""
    path = Path(path)
    block = json.loads((path / "config.json").read_text()).get("scope")
    if not block:
        return None
    where = f"checkpoint {path.name!r}"
    if not isinstance(block, dict):
        raise ValueError(f"config.json in {where} has a scope block that is not a JSON object")
    version = block.get("version")
    if version not in IMAGE_POOLING:
        readable = " and ".join(str(v) for v in IMAGE_POOLING)
        raise ValueError(
            f"config.json in {where} has scope statistics of version {version!r}, which this mmdemo cannot read"
            f" (it reads versions {readable}); fit them again with python -m mmdemo fit-scope"
        )
    if block.get("file", SCOPE_FILE) != SCOPE_FILE:  # a name, never a path out of the folder
        raise ValueError(f"config.json in {where} names {block.get('file')!r} as its scope file, not {SCOPE_FILE}")
    file = path / SCOPE_FILE
    if not file.is_file():
        raise ValueError(f"{where} is not complete: config.json has a scope block but {SCOPE_FILE} is missing")
    missing = [k for k in BLOCK_FIELDS if k not in block]
    if missing:
        raise ValueError(f"config.json in {where} has an incomplete scope block: no {', '.join(missing)}")
    try:
        t = load_file(file)
    except (SafetensorError, OSError) as e:
        reason = str(e).replace(str(file), SCOPE_FILE)
        raise ValueError(f"{SCOPE_FILE} in {where} is not a safetensors file ({reason})") from None
    problem = _tensor_problem(t, len(block["vocabulary"]))
    if problem:
        raise ValueError(f"{SCOPE_FILE} in {where} does not hold scope statistics: {problem}")
    try:
        return ScopeStats(
            image_mean=t["image_mean"].float(),
            image_precision=t["image_precision"].float(),
            text_bank=t["text_bank"].float(),
            vocab_vectors=t["vocab_vectors"].float(),
            vocabulary=list(block["vocabulary"]),
            label_words=list(block["label_words"]),
            slots=list(block["slots"]),
            image_threshold=float(block["image_threshold"]),
            text_similarity_floor=float(block["text_similarity_floor"]),
            unseen_fraction_limit=float(block["unseen_fraction_limit"]),
            reliance_floor=float(block["reliance_floor"]),
            fitted_on=dict(block.get("fitted_on", {})),
            version=version,
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"config.json in {where} has a scope block with a value of the wrong type ({e})") from None


def _tensor_problem(t: dict[str, torch.Tensor], vocabulary: int) -> str | None:
    """What is wrong with the tensors of a scope file (None: nothing)."""
    expected = ("image_mean", "image_precision", "text_bank", "vocab_vectors")
    missing = [k for k in expected if k not in t]
    if missing:
        return f"no {', '.join(missing)}"
    c = t["image_mean"].shape
    if len(c) != 1 or tuple(t["image_precision"].shape) != (c[0], c[0]):
        return f"image_mean {tuple(c)} and image_precision {tuple(t['image_precision'].shape)} do not match"
    if t["text_bank"].ndim != 2 or t["vocab_vectors"].ndim != 2 or len(t["vocab_vectors"]) > vocabulary:
        return f"text_bank {tuple(t['text_bank'].shape)} or vocab_vectors {tuple(t['vocab_vectors'].shape)} malformed"
    return None


# -- pure maths ------------------------------------------------------------------------------
def pooled_image(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, 2C): the mean over regions, then the standard deviation over regions.
    The spread is what tells six objects on white from a blank page or a line of text, which
    have much the same mean; both move little when a scene is re-encoded."""
    fm = feature_map.float()
    mean = fm.mean((2, 3))  # (B, C)
    spread = (fm - mean[:, :, None, None]).square().mean((2, 3)).sqrt()  # (B, C)
    return torch.cat([mean, spread], 1)


def image_statistic(stats: ScopeStats, pooled: torch.Tensor) -> torch.Tensor:
    """(..., 2C) pooled features -> what ``stats``' image Gaussian was fitted on (version 1:
    the mean over regions alone)."""
    if IMAGE_POOLING[stats.version] == "mean":
        return pooled[..., : pooled.shape[-1] // 2]
    return pooled


def pooled_text(text_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, E), (B, T) -> (B, E) unit-norm mean over the real tokens."""
    m = attention_mask[:, : text_states.shape[1]].unsqueeze(-1).float()
    pooled = (text_states.float() * m).sum(1) / m.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def fit_gaussian(x: torch.Tensor, shrink: float = SHRINK) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and precision of (N, C) features, covariance shrunk towards its mean eigenvalue."""
    x = x.double()
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / max(1, len(x) - 1)
    target = cov.diagonal().mean().clamp(min=1e-8)
    cov = (1 - shrink) * cov + shrink * target * torch.eye(len(mean), dtype=cov.dtype)
    return mean.float(), torch.linalg.inv(cov).float()


def mahalanobis(x: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    d = x.float() - mean
    return torch.einsum("bi,ij,bj->b", d, precision, d).clamp(min=0).sqrt()


def nearest_similarity(x: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """(B, E) unit vectors -> (B,) cosine to the nearest row of ``bank``."""
    return (x.float() @ bank.float().T).max(1).values


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Row-wise total variation distance of two (B, L) probability tables."""
    return 0.5 * (p - q).abs().sum(-1)


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


def text_problems(ws: list[str], stats: ScopeStats, synonyms: dict[str, str]) -> tuple[list[str], list[str], float]:
    """(unseen words, slot problems, unseen fraction) of one text's words. ``synonyms`` maps
    unseen words to the known word they stand for."""
    seen, labels = set(stats.vocabulary), set(stats.label_words)
    known = seen | labels
    mapped = [synonyms.get(w, w) for w in ws]
    unseen = [w for w, m in zip(ws, mapped) if m not in known]
    problems = []
    for slot in stats.slots:
        members = set(slot["words"])
        n = sum(w in members for w in mapped)
        if n not in slot["counts"]:
            expected = " or ".join(str(c) for c in slot["counts"])
            problems.append(f"{n} of the words {{{', '.join(slot['words'])}}} (training texts have {expected})")
            continue
        for i, w in enumerate(mapped):
            if w not in members:
                continue
            for side, j in (("left", i - 1), ("right", i + 1)):
                neighbour = mapped[j] if 0 <= j < len(mapped) else ""
                # an unseen neighbour or an answer word ("the red square") gets the benefit of
                # the doubt (a new wording); a word of the training texts where they never had
                # it is a different question ("How many red objects ...")
                if neighbour in seen and neighbour not in labels and neighbour not in slot[side]:
                    problems.append(f"'{ws[i]}' next to '{neighbour}', never seen in training")
    return unseen, problems, len(unseen) / max(1, len(ws))


def assess(
    stats: ScopeStats | None,
    image_vec: torch.Tensor,
    text_vec: torch.Tensor,
    ws: list[str],
    synonyms: dict[str, str],
    reliance: float,
) -> dict:
    """One prediction's scope: ``in_scope``, the reasons and the scores behind them."""
    if stats is None:
        return {"in_scope": True, "fitted": False, "reasons": [], "note": "this checkpoint has no scope statistics"}
    distance = float(mahalanobis(image_statistic(stats, image_vec)[None], stats.image_mean, stats.image_precision)[0])
    similarity = float(nearest_similarity(text_vec[None], stats.text_bank)[0])
    unseen, slot_problems, unseen_fraction = text_problems(ws, stats, synonyms)
    reasons = []
    if distance > stats.image_threshold:
        reasons.append("image")
    if slot_problems or similarity < stats.text_similarity_floor or unseen_fraction > stats.unseen_fraction_limit:
        reasons.append("text")
    if reliance < stats.reliance_floor:
        reasons.append("ignores_image")
    return {
        "in_scope": not reasons,
        "fitted": True,
        "reasons": reasons,
        "messages": [MESSAGES[r] for r in reasons],
        "image_distance": round(distance, 3),
        "image_threshold": round(stats.image_threshold, 3),
        "text_similarity": round(similarity, 4),
        "text_similarity_floor": round(stats.text_similarity_floor, 4),
        "unseen_words": unseen,
        "unseen_fraction": round(unseen_fraction, 4),
        "slot_problems": slot_problems,
        "image_reliance": round(reliance, 4),
        "image_reliance_floor": round(stats.reliance_floor, 4),
    }


# -- word embeddings (synonyms) -----------------------------------------------------------------
def embedding_table(text_encoder: torch.nn.Module, vocab_size: int) -> torch.Tensor | None:
    """The text encoder's input embedding table (the first embedding with the tokenizer's
    vocabulary size), or None."""
    for module in text_encoder.modules():
        if isinstance(module, torch.nn.Embedding) and module.num_embeddings == vocab_size:
            return module.weight.detach()
    return None


def word_vectors(table: torch.Tensor, tokenizer, ws: list[str]) -> torch.Tensor:
    """(len(ws), E) unit-norm mean input embedding of each word's WordPiece tokens."""
    rows = []
    for w in ws:
        ids = tokenizer(w, add_special_tokens=False)["input_ids"] or [tokenizer.unk_token_id]
        rows.append(table[ids].float().mean(0))
    return torch.nn.functional.normalize(torch.stack(rows), dim=-1) if rows else torch.zeros(0, table.shape[1])


def synonyms_for(ws: list[str], stats: ScopeStats, table: torch.Tensor | None, tokenizer) -> dict[str, str]:
    """Unseen words whose embedding is within SYNONYM_COS of a known word -> that word."""
    known = set(stats.vocabulary) | set(stats.label_words)
    unseen = sorted({w for w in ws if w not in known})
    if not unseen or table is None or not len(stats.vocab_vectors):
        return {}
    sims = word_vectors(table, tokenizer, unseen) @ stats.vocab_vectors.T  # (U, V)
    best, index = sims.max(1)
    return {w: stats.vocabulary[int(i)] for w, b, i in zip(unseen, best.tolist(), index.tolist()) if b >= SYNONYM_COS}


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
    """Encode labelled examples (data.Example) the way prediction does; ``with_logits=False``
    skips the fusion (only the pooled encoder outputs are needed of training rows)."""
    from ..training.features import Encoded  # the training engine's encoder cache, one pass per image / text

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
    from ..model.encoders import load_tokenizer

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
    from ..device import resolve_device
    from ..datasets.splits import split_by_image

    if val_dataset is not None:
        train_examples, val_examples = dataset.examples, val_dataset.examples
    else:
        train_examples, val_examples = split_by_image(dataset.examples, val_fraction, seed)
    stats, _ = fit_scope(model, train_examples, val_examples or train_examples, resolve_device(device))
    save_scope(path, stats)
    return stats
