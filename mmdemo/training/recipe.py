"""The default training recipe: settings chosen from the data and a time budget.

A user who runs ``python -m mmdemo train --csv data.csv --out m`` with no other flag gets the
settings below; every explicit flag (``--epochs``, ``--image-size``, ``--lr`` ...) overrides
the recipe's choice for that value. ``choose()`` trains nothing (a data profile, a budget,
the overrides and the machine's speed in, settings + architecture + the reason for each
choice out), so it is tested without training anything.

What the choices rest on (the digits benchmark, ``python -m mmdemo make-real-benchmark --kind
digits`` then ``python -m mmdemo train``; figures in docs/benchmarks.md):
- image size: small scans blown up to 224 px cost 12x the encoder work of 64 px (by area) and
  learn more slowly; 64 px gives a 4x4 grid of stride-16 regions, each with the patch
  embedding of its own pixels. Photos (shorter side over 112 px) keep 224 px, the size the
  encoder was trained at.
- encoders frozen and cached: an epoch then costs only the fusion, so early stopping and the
  time budget can act every few seconds.
- epochs from the budget, early stopping on validation (patience), the best epoch kept.
- class weights when the largest class is 5x the smallest (csv_table.IMBALANCE_RATIO).

The time estimate (``Recipe.estimate_s``, shown before every fine-tune) adds up per-image,
per-text and per-row costs measured once on a reference machine, scaled to the machine at hand
by ``machine_speed()``: a fixed piece of the same work timed here and on the reference.
"""

from __future__ import annotations

import functools
import math
import os
import re
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, fields
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..datasets.csv_table import IMBALANCE_RATIO, Dataset
from ..model.classifier import ModelConfig
from ..model.encoders import LITE0_CUTS, EfficientNetLite0
from ..model.fusion import CrossModalFusion
from .settings import TrainSettings

DEFAULT_BUDGET_S = 600.0  # 10 minutes on the machine at hand
SETTING_NAMES = {f.name for f in fields(TrainSettings)}
CONFIG_NAMES = {f.name for f in fields(ModelConfig)} - {"labels"}

# Costs on the reference machine (2 CPU cores, torch fp32 eager, 2 threads), the basis of the
# time estimate; machine_speed() scales them to the machine at hand:
ENCODE_MS_224 = 27.0  # EfficientNet-Lite0 features of one 224-px image (scales with the area)
TEXT_MS = 1.6  # MiniLM states of one question in a batch
FUSION_MS_ROW = 1.5  # one training row through fusion + head, forward and backward ...
FUSION_MS_ROW_REGION = 0.03  # ... plus this per image region (16 at 64 px, 196 at 224 px)
# the image–text contrastive loss stays off: measured on the real-data benchmarks (bench-contrastive)
CONTRASTIVE_WHY = (
    "off: on the digit scans and the photo patches it did not beat training without it (docs/training.md); their"
    " texts are questions that every image is asked, so a text cannot tell its image from the others"
)
VALIDATION_SHARE = 0.3  # an evaluation pass costs about this share of a training pass per row
# each block's share of the stride-16 EfficientNet-Lite0's multiply-adds (stem first; counted
# over its convolutions at 224 px): what training its top blocks adds to an epoch
LITE0_BLOCK_SHARE = (0.045, 0.041, 0.12, 0.106, 0.075, 0.081, 0.048, 0.065, 0.065, 0.084, 0.135, 0.135)
STAGE2_BLOCKS = 3  # the last stage of the stride-16 encoder (blocks 8-10: 80 -> 112 channels)
# questions with these words are about brightness or colour: no colour jitter then
COLOUR_WORDS = frozenset(
    "bright brighter brightest brightness dark darker darkest light lighter colour color colours colors coloured"
    " colored red green blue yellow orange purple pink brown black white grey gray greyscale grayscale monochrome"
    " shade shaded".split()
)
# ... about left and right, mirrors or writing: never mirrored then
DIRECTION_WORDS = frozenset(
    "left right leftmost rightmost mirror mirrored flipped flip reversed text letter letters word words written"
    " writing read digit digits number numbers sign clockwise anticlockwise counterclockwise east west".split()
)
# ... about sharpness, focus or texture: never blurred then
SHARPNESS_WORDS = frozenset(
    "sharp sharpness blur blurred blurry focus focused unfocused crisp detail detailed texture textured smooth"
    " noise noisy grain grainy quality resolution pixelated".split()
)
# ... about size, counts or the whole frame: never zoomed then
SIZE_WORDS = frozenset(
    "size big bigger biggest small smaller smallest large larger largest tiny huge many count number close"
    " closer far zoom zoomed whole entire edge edges corner corners border frame centre center cropped".split()
)
# ... about where things are in the picture: never shifted nor zoomed then (a shifted or
# zoomed-in copy moves what was near the top towards the middle or the bottom)
POSITION_WORDS = frozenset(
    "top bottom upper lower above below left right side position where height middle half".split()
)
SIZE_WORDS |= POSITION_WORDS
PHOTO_EQUAL_NEIGHBOURS = 0.5  # a photo has fewer exactly equal neighbouring pixels (drawings ~0.98, photo crops ~0.08)
PHOTO_ZOOM = 0.6  # a zoomed copy of a photo keeps a part 60..100 % of its side
PHOTO_BLUR = 1.0  # pixels of blur at 128 px, at most (scaled with the image size)
STAGE1_VIEWS = 4  # augmented copies of each photo for stage 1, at most ...
STAGE1_VIEW_SHARE = 0.3  # ... and as many as encoding them once costs of the budget


@dataclass
class DataProfile:
    rows: int
    images: int
    texts: int
    class_counts: dict[str, int]
    image_side: int  # median shorter side of (a sample of) the images, in pixels
    imbalance: float = 1.0  # largest / smallest count among answers that compete (see profile)
    words: frozenset[str] = frozenset()  # the words of the questions, the labels and the label columns, lower case
    photographic: float = 0.0  # share of (a sample of) the images that look like photographs (``looks_photographic``)


class Speed(NamedTuple):
    """How many times the reference machine's time this machine takes for each kind of work
    (1.0: as fast as the reference, 2.0: half as fast)."""

    encoder: float = 1.0  # the image encoder's convolutions (ENCODE_MS_224, stage 2's blocks)
    fusion: float = 1.0  # attention and feed-forward layers: fusion and head (FUSION_MS_*), MiniLM (TEXT_MS)


class Probe(NamedTuple):
    """Milliseconds the probe's two pieces of work take (``probe_ms``)."""

    encoder_ms: float
    fusion_ms: float


REFERENCE = Speed()
# probe_ms(2) on the machine the costs above were measured on, idle (the best of many calls);
# a machine's own: python -c "from mmdemo.training.recipe import probe_ms; print(probe_ms(2))"
REFERENCE_PROBE = Probe(encoder_ms=15.7, fusion_ms=36.4)
PROBE_IMAGES, PROBE_ROWS, PROBE_TOKENS = 4, 16, 12  # a small batch: 4 questions about each of 4 images
PROBE_ENCODER_SIZE, PROBE_FUSION_SIZE = 128, 64  # pixels: the encoder's work by area; 16 regions for the fusion
PROBE_TEXT_DIM = 384  # all-MiniLM-L6-v2's hidden size: the text states the fusion reads
PROBE_BUDGET_S = 0.3  # each piece's repeats stop here


@dataclass
class Recipe:
    settings: TrainSettings
    config: dict  # ModelConfig fields for a new model (empty when fine-tuning a checkpoint)
    choices: dict[str, dict] = field(default_factory=dict)  # name -> {"value", "why"}
    estimate_s: float = 0.0  # expected wall time on this machine

    def describe(self) -> str:
        """The plan shown before training: each setting with why, "set by you" for a value the
        caller set (a flag, a field the user edited), then the estimate."""
        lines = [
            f"{name} = {c['value']}  ({'set by you' if c['why'] == 'set explicitly' else c['why']})"
            for name, c in self.choices.items()
        ]
        return "\n".join(lines + [f"estimated time on this machine: {format_seconds(self.estimate_s)}"])


def profile(dataset: Dataset, sample: int = 200) -> DataProfile:
    """What the recipe looks at; reads up to ``sample`` images (their size, and whether they
    look like photographs, at up to 128 px)."""
    images = sorted({e.image for e in dataset.examples})
    step = max(1, len(images) // sample)
    sides, photos = [], []
    for path in images[::step][:sample]:
        with Image.open(path) as im:
            sides.append(min(im.size))
            photos.append(looks_photographic(im))
    return DataProfile(
        rows=len(dataset.examples),
        images=len(images),
        texts=len({e.text for e in dataset.examples}),
        class_counts=dict(dataset.class_counts),
        image_side=int(statistics.median(sides)) if sides else 224,
        imbalance=imbalance(dataset),
        words=frozenset(w for text in _worded(dataset) for w in re.findall(r"[a-z]+", text.lower())),
        photographic=sum(photos) / len(photos) if photos else 0.0,
    )


def looks_photographic(im: Image.Image, side: int = 128) -> bool:
    """Whether an image looks like a photograph rather than a drawing, a chart or a scan: in a
    photo (sensor noise, texture, shading) neighbouring pixels are rarely exactly equal, in a
    drawing most are (flat fills). Read at up to ``side`` px, nearest-neighbour, so flat areas
    stay flat."""
    im.draft("RGB", (2 * side, 2 * side))  # JPEG: decode at a fraction of the size
    small = im.convert("RGB")
    small.thumbnail((side, side), Image.NEAREST)
    pixels = np.asarray(small, np.int16)
    if pixels.shape[1] < 2:
        return False
    equal = (pixels[:, 1:] == pixels[:, :-1]).all(axis=-1).mean()
    return bool(equal < PHOTO_EQUAL_NEIGHBOURS)


def _worded(dataset: Dataset) -> set[str]:
    """Texts whose words say what the data is about: the questions, and every task's labels and
    label column name (a column "side" with labels left / right is about direction)."""
    texts = {e.text for e in dataset.examples}
    for name, labels in zip(dataset.task_names(), dataset.task_labels()):
        texts |= set(labels) | ({name.replace("_", " ")} if dataset.tasks else set())
    return texts


def imbalance(dataset: Dataset, min_rows: int = 20) -> float:
    """Largest / smallest class count among answers that compete for the same question.

    Answers of different questions do not compete ("7" never answers "even or odd?"), so a
    digit being rarer than "odd" is not imbalance. Questions asked at least ``min_rows`` times
    are measured one by one; with free-form questions (none repeated that often) all rows are."""
    ratios = []
    for i, task in enumerate(dataset.task_names()):  # answers of different tasks do not compete either
        by_text: dict[str, Counter] = defaultdict(Counter)
        for e in dataset.examples:
            if e.task_label(task, i == 0):
                by_text[e.text][e.task_label(task, i == 0)] += 1
        groups = [c for c in by_text.values() if sum(c.values()) >= min_rows]
        if not groups:
            groups = [sum(by_text.values(), Counter())]
        ratios += [max(c.values()) / min(c.values()) for c in groups if c]
    return max(ratios, default=1.0)


def image_size_for(side: int) -> tuple[int, str]:
    if side <= 48:
        return 64, f"small images ({side} px): 64 px gives a 4x4 grid of regions without blowing them up to 224"
    if side <= 112:
        return 128, f"medium images ({side} px): 128 px gives an 8x8 grid"
    return 224, f"photos ({side} px): the size the image encoder was trained at"


def choose(
    data: DataProfile,
    budget_s: float | None = None,
    overrides: dict | None = None,
    init_config: ModelConfig | None = None,
    speed: Speed | None = None,
) -> Recipe:
    """The settings for ``data`` within ``budget_s`` seconds; ``overrides`` (explicit flags,
    names of TrainSettings or ModelConfig fields) win over every choice. Times are estimated at
    ``speed`` (default: this machine's, ``machine_speed`` with the threads training will use)."""
    overrides = dict(overrides or {})
    unknown = set(overrides) - SETTING_NAMES - CONFIG_NAMES
    if unknown:
        raise ValueError(f"unknown training options: {sorted(unknown)}")
    budget_s = budget_s or DEFAULT_BUDGET_S
    choices: dict[str, dict] = {}

    def pick(name: str, value, why: str):
        if name in overrides:
            value, why = overrides[name], "set explicitly"
        choices[name] = {"value": value, "why": why}
        return value

    config: dict = {}
    if init_config is None:
        size, why = image_size_for(data.image_side)
        config["image_size"] = pick("image_size", size, why)
        photographs = data.image_side > 48 and data.photographic >= 0.5
        config["patch_embedding"] = pick(
            "patch_embedding",
            not photographs,
            f"photos ({data.photographic:.0%} of the images sampled look like photographs): the regions are the"
            " pretrained encoder's features alone; an embedding of their raw pixels lets the model learn the exact"
            " colours and textures of the parts of the photos it was given"
            if photographs
            else "each region also embeds its own pixels: exact colours and layout, which the encoder's features blur",
        )
        config["image_stride"] = pick("image_stride", 16, "stride-16 regions: the finest grid the encoder offers")
        for name in sorted(CONFIG_NAMES & set(overrides) - set(config)):
            config[name] = pick(name, overrides[name], "")
        image_size, stride = config["image_size"], config["image_stride"]
        pool = config.get("region_pool", 1)
    else:
        image_size, stride, pool = init_config.image_size, init_config.image_stride, init_config.region_pool
        choices["image_size"] = {"value": image_size, "why": "kept from the checkpoint fine-tuned"}

    freeze = pick(
        "freeze",
        ["image_encoder", "text_encoder"],
        "encoders frozen and their outputs cached: an epoch costs only the fusion, so early stopping"
        " and the time budget act every few seconds",
    )
    lr = pick(
        "lr",
        3e-4 if init_config is not None else 1e-3,
        "fine-tuning a trained fusion: a gentle rate"
        if init_config is not None
        else "a new fusion on cached features: at 64 px, 1e-3 passed 98 % validation accuracy on digit scans"
        " by epoch 6 (the old default, 224 px at 3e-4, scored 87 % after 10 epochs)",
    )
    batch_size = pick("batch_size", 64, "64 rows a step")
    free_threads, threads_why = cpu_threads()
    if speed is None:
        speed = machine_speed(overrides.get("cpu_threads", free_threads))
    regions = regions_for(image_size, stride, pool)
    estimate = estimate_seconds(data, image_size, regions, 1, freeze, speed)
    per_epoch = estimate_seconds(data, image_size, regions, 2, freeze, speed) - estimate
    fixed = estimate - per_epoch
    room = max(1, int((0.8 * budget_s - fixed) / max(per_epoch, 1e-6)))
    epochs = pick(
        "epochs",
        max(3, min(40, room)),
        f"as many as fit in 80 % of the {format_seconds(budget_s)} budget (about"
        f" {format_seconds(per_epoch)} an epoch here), at most 40",
    )
    patience = pick("patience", 6, "stop after 6 epochs without a better validation score; the best epoch is kept")
    class_weights = pick(
        "class_weights",
        data.imbalance >= IMBALANCE_RATIO,
        f"largest / smallest count among the answers of one question = {data.imbalance:.1f}"
        f" (weights from {IMBALANCE_RATIO:g})",
    )
    threads = pick("cpu_threads", free_threads, threads_why)
    contrastive = pick("contrastive", 0.0, CONTRASTIVE_WHY)
    settings = TrainSettings(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        freeze=list(freeze),
        patience=patience,
        class_weights=class_weights,
        cpu_threads=threads,
        contrastive=contrastive,
        extend_epochs="epochs" not in overrides,  # epochs it chose from an estimate, not the user's
    )
    _choose_stage2(settings, pick, data, overrides, init_config or config, image_size, regions, speed)
    _choose_augmentation(settings, pick, data, overrides, init_config or config, image_size, budget_s, speed)
    for name in sorted(SETTING_NAMES & set(overrides) - set(choices)):
        setattr(settings, name, pick(name, overrides[name], ""))
    estimate = estimate_seconds(data, image_size, regions, settings.epochs, settings.freeze, speed)
    if settings.stage2_blocks:
        estimate += stage2_seconds(data, image_size, regions, settings, speed)
    if settings.stage1_augment:  # each further copy through the encoder once
        estimate += (settings.augment_views - 1) * encode_seconds(data, image_size, speed)
    return Recipe(settings, config, choices, min(estimate, budget_s))


def _choose_stage2(
    settings: TrainSettings, pick, data: DataProfile, overrides: dict, arch, image_size, regions, speed: Speed
):
    """Stage 2: after stage 1 converges, the top blocks of the frozen image encoder train too,
    when the time left allows (stage2.plan_stage2 decides that at run time, from this run's
    epoch times)."""
    get = arch.get if isinstance(arch, dict) else lambda name, default: getattr(arch, name)
    lite0 = get("image_encoder", "efficientnet_lite0") == "efficientnet_lite0" and get("image_pretrained", True)
    if "freeze" in overrides:
        blocks, why = 0, "freeze set explicitly: the encoders train as it says, in one stage"
    elif "epochs" in overrides:
        blocks, why = 0, "epochs set explicitly: one stage of that many epochs"
    elif not lite0 or "image_encoder" not in settings.freeze:
        blocks, why = (
            0,
            "a second stage tunes the top blocks of a pretrained EfficientNet-Lite0, which this model lacks",
        )
    else:
        blocks, why = (
            STAGE2_BLOCKS,
            (
                f"stage 2: after stage 1 stops early, the last {STAGE2_BLOCKS} blocks of the image encoder (its"
                " last stage, 0.45 M weights, stored in the checkpoint; the rest stays referenced) train too, if"
                " the time left fits it"
            ),
        )
    settings.stage2_blocks = pick("stage2_blocks", blocks, why)
    if settings.stage2_blocks and "image_encoder" not in settings.freeze:
        raise ValueError("stage2_blocks tunes the top blocks of a frozen image encoder: keep image_encoder in freeze")
    if not settings.stage2_blocks:
        return
    settings.stage2_lr = pick(
        "stage2_lr", float(f"{settings.lr / 10:.3g}"), "stage 2 refines a converged model: a tenth of stage 1's rate"
    )
    settings.layer_decay = pick(
        "layer_decay", 0.5, "each block further down the encoder learns at half the rate of the one above it"
    )
    settings.stage2_epochs = pick("stage2_epochs", 10, "at most 10, fewer when the time left is shorter")
    settings.stage2_patience = pick(
        "stage2_patience", 3, "stop stage 2 after 3 epochs that do not beat the best so far"
    )
    stage1 = estimate_seconds(data, image_size, regions, 2, settings.freeze, speed) - estimate_seconds(
        data, image_size, regions, 1, settings.freeze, speed
    )
    stage2 = stage2_epoch_seconds(data, image_size, regions, settings.stage2_blocks, speed)
    settings.stage2_cost = round(stage2 / stage1, 2)


def _choose_augmentation(
    settings: TrainSettings, pick, data: DataProfile, overrides: dict, arch, image_size: int, budget_s: float,
    speed: Speed,
):  # fmt: skip
    """Augmented copies of the training images: stage 2 trains on them; on photos stage 1 does
    too (a model that saw only the parts of a picture it was given learns those parts by heart:
    zoomed-in parts, mirrored and blurred copies show it the same things framed otherwise). Each
    change only where no question is about what it changes (augment.py)."""
    photos = data.image_side > 48
    get = arch.get if isinstance(arch, dict) else lambda name, default: getattr(arch, name)
    lite0 = get("image_encoder", "efficientnet_lite0") == "efficientnet_lite0" and get("image_pretrained", True)
    frozen = "image_encoder" in settings.freeze and "freeze" not in overrides
    if not lite0:
        why = "stage 1 copies are encoded by a frozen pretrained EfficientNet-Lite0, which this model lacks"
    elif not frozen:
        why = "the image encoder trains"
    elif photos:
        why = "photos: stage 1 trains on augmented copies too, each encoded once by the frozen encoder"
    else:
        why = "small images: stage 1 trains on the images as they are"
    stage1 = pick("stage1_augment", photos and frozen and lite0, why)
    settings.stage1_augment = stage1
    if not settings.stage2_blocks and not stage1:
        return
    if stage1:
        per_view = encode_seconds(data, image_size, speed)
        views = max(2, min(STAGE1_VIEWS, int(STAGE1_VIEW_SHARE * budget_s / max(per_view, 1e-6))))
        why = (
            f"{views} copies of each training image (the first as it is), each encoded once (about"
            f" {format_seconds(per_view)} a copy here, at most {STAGE1_VIEW_SHARE:.0%} of the budget)"
        )
    else:
        views = 4 if image_size <= 128 else 2
        why = f"{views} copies of each training image (the first as it is), encoded once below the trained blocks"
    settings.augment_views = pick("augment_views", views, why)
    placed = sorted(data.words & POSITION_WORDS)
    settings.augment_shift = pick(
        "augment_shift",
        0.0 if placed else 0.06,
        f"not shifted: the questions ask about {', '.join(placed[:4])}"
        if placed
        else "shifted by up to 6 % of the side",
    )
    blur = round(PHOTO_BLUR * image_size / 128, 2)
    for name, words, value, off, yes, no, small in (
        ("augment_zoom", SIZE_WORDS, PHOTO_ZOOM, 1.0, f"zoomed in on a random part of {PHOTO_ZOOM:.0%}..100 % of"
         " the side: the same things framed otherwise", "not zoomed", "not zoomed: small images have little to spare"),
        ("augment_mirror", DIRECTION_WORDS, True, False, "half the copies mirrored left to right: no question is"
         " about left, right or writing", "never mirrored", "never mirrored: small images are often digits or"
         " letters, which a mirror changes"),
        ("augment_blur", SHARPNESS_WORDS, blur, 0.0, f"half the copies blurred by up to {blur:g} px: no question is"
         " about sharpness or texture", "never blurred", "never blurred: small images have little detail to spare"),
    ):  # fmt: skip
        asked = sorted(data.words & words)
        if asked:
            setattr(settings, name, pick(name, off, f"{no}: the questions ask about {', '.join(asked[:4])}"))
        else:
            setattr(settings, name, pick(name, value if photos else off, yes if photos else small))
    touched = sorted(data.words & COLOUR_WORDS)
    settings.augment_colour = pick(
        "augment_colour",
        0.0 if touched else 0.2,
        f"no colour jitter: the questions ask about {', '.join(touched[:4])}"
        if touched
        else "brightness and contrast jittered by up to 20 %: no question is about brightness or colour",
    )
    framed = settings.augment_zoom < 1 or settings.augment_mirror or settings.augment_shift or settings.augment_colour
    if stage1 and not framed:  # a copy would differ by a blur alone: the epochs its encoding costs are worth more
        settings.stage1_augment = pick(
            "stage1_augment",
            False,
            "photos whose questions or labels are about where things are, their direction and their colour: a copy"
            " could differ by a slight blur only, so stage 1 trains on the images as they are (more epochs instead)",
        )


def cpu_threads(cores: int | None = None, load: float | None = None, busy: float | None = None) -> tuple[int, str]:
    """Torch threads for training on a CPU: all cores, unless other processes keep them busy.

    Threads that wait for each other spin while the scheduler runs someone else, so a thread
    on a busy core slows every step down many times over. How busy the cores are: the cores
    busy right now (``busy_cores``, over a quarter of a second), or the 1-minute load average
    where that cannot be read; not the load average first, because it still counts the command
    that ran just before (making the data, a first training run) for a minute after it ended.
    A training record's ``throughput`` shows what a choice gave."""
    cores = cores or _cores()
    measure = load is None
    load = os.getloadavg()[0] if measure and hasattr(os, "getloadavg") else (load or 0.0)
    busy = busy_cores() if busy is None and measure else busy
    taken = load if busy is None else busy
    free = max(1, min(cores, round(cores - taken)))
    now = "" if busy is None else f", {busy:.1f} busy now"
    return (
        free,
        f"{cores} cores, load average {load:.1f}{now}: threads that would contend for busy cores slow training down",
    )


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def busy_cores(seconds: float = 0.25) -> float | None:
    """How many of this process's cores other work keeps busy, over ``seconds`` (from
    /proc/stat; None where there is none)."""
    mine = {f"cpu{i}" for i in os.sched_getaffinity(0)} if hasattr(os, "sched_getaffinity") else None

    def sample() -> tuple[int, int]:
        total = idle = 0
        with open("/proc/stat") as f:
            for line in f:
                name, *values = line.split()
                if not name.startswith("cpu") or name == "cpu" or (mine is not None and name not in mine):
                    continue
                ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
                total, idle = total + sum(ticks), idle + ticks[3] + ticks[4]
        return total, idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    cores = len(mine) if mine else _cores()
    return round(cores * (1 - (idle1 - idle0) / (total1 - total0)), 2)


def probe_ms(threads: int | None = None, repeats: int = 3) -> Probe:
    """Milliseconds this machine takes for a fixed piece of the recipe's own work, with
    ``threads`` torch threads (None: as set now): the image encoder (EfficientNet-Lite0) on
    PROBE_IMAGES images of PROBE_ENCODER_SIZE px, and one training step's forward and backward
    of the default fusion and head on PROBE_ROWS rows. Random weights (as fast as trained ones,
    and nothing is read from disk); the best of ``repeats`` after a warm-up, since other work on
    the machine only ever slows a run down. The random generators and the thread count are left
    as they were."""
    before = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        try:
            if threads:
                torch.set_num_threads(threads)
            torch.manual_seed(0)
            encoder = EfficientNetLite0(16).eval()
            config = ModelConfig(labels=["a", "b", "c"])
            fusion = CrossModalFusion(
                LITE0_CUTS[16][1], PROBE_TEXT_DIM, config.fusion_dim, config.fusion_heads, config.fusion_layers,
                config.region_layers, config.dropout, patch_size=16,
            )  # fmt: skip
            head = nn.Sequential(
                nn.Linear(2 * config.fusion_dim, config.fusion_dim), nn.GELU(), nn.Linear(config.fusion_dim, 3)
            )
            images = torch.randn(PROBE_IMAGES, 3, PROBE_ENCODER_SIZE, PROBE_ENCODER_SIZE)
            grid = PROBE_FUSION_SIZE // 16
            feature_map = torch.randn(PROBE_IMAGES, LITE0_CUTS[16][1], grid, grid)  # (U, C, h, w)
            pixels = torch.randn(PROBE_IMAGES, 3, PROBE_FUSION_SIZE, PROBE_FUSION_SIZE)  # (U, 3, S, S)
            text_states = torch.randn(PROBE_ROWS, PROBE_TOKENS, PROBE_TEXT_DIM)  # (B, T, E)
            mask = torch.ones(PROBE_ROWS, PROBE_TOKENS, dtype=torch.long)
            image_index = torch.arange(PROBE_ROWS) % PROBE_IMAGES  # (B,)
            drop_image = torch.arange(PROBE_ROWS) == 0  # modality dropout's path, as in training
            targets = torch.arange(PROBE_ROWS) % 3

            def encode() -> None:
                with torch.no_grad():
                    encoder(images)

            def train_step() -> None:
                summary, _, _ = fusion(feature_map, text_states, mask, drop_image, None, image_index, pixels)
                F.cross_entropy(head(summary), targets).backward()

            return Probe(_best_ms(encode, repeats), _best_ms(train_step, repeats))
        finally:
            torch.set_num_threads(before)


def _best_ms(work, repeats: int) -> float:
    """The fastest of ``repeats`` runs of ``work`` after a warm-up; no further runs once
    PROBE_BUDGET_S is spent (a machine busy enough to slow it down that much is measured as slow)."""
    start = time.perf_counter()
    work()  # warm-up: first-call allocations and kernel choices
    times: list[float] = []
    while len(times) < max(1, repeats) and (not times or time.perf_counter() - start < PROBE_BUDGET_S):
        t = time.perf_counter()
        work()
        times.append(time.perf_counter() - t)
    return 1000 * min(times)


@functools.cache
def machine_speed(threads: int | None = None) -> Speed:
    """This machine's Speed against the reference machine, from ``probe_ms(threads)``: measured
    once per process and thread count (a fraction of a second), since the estimate is shown
    before every fine-tune. Only the CPU is measured, as the costs were: a run on a GPU is faster
    than its estimate."""
    probe = probe_ms(threads)
    return Speed(probe.encoder_ms / REFERENCE_PROBE.encoder_ms, probe.fusion_ms / REFERENCE_PROBE.fusion_ms)


def encode_seconds(data: DataProfile, image_size: int, speed: Speed = REFERENCE) -> float:
    """The image encoder once over every image."""
    return speed.encoder * ENCODE_MS_224 * (image_size / 224) ** 2 * data.images / 1000


def regions_for(image_size: int, stride: int, pool: int = 1) -> int:
    """Image regions the fusion reads: the encoder's 'same' padding rounds the grid up, and so
    does pooling it."""
    return math.ceil(math.ceil(image_size / stride) / pool) ** 2


def estimate_seconds(
    data: DataProfile, image_size: int, regions: int, epochs: int, freeze: list[str], speed: Speed = REFERENCE
) -> float:
    """Expected wall time at ``speed`` (machine_speed()): encoding once, then ``epochs`` passes."""
    encode_image = speed.encoder * ENCODE_MS_224 * (image_size / 224) ** 2 * data.images / 1000
    encode_text = speed.fusion * TEXT_MS * data.texts / 1000
    fusion = speed.fusion * (FUSION_MS_ROW + FUSION_MS_ROW_REGION * regions) * data.rows / 1000
    per_epoch = fusion * (1 + VALIDATION_SHARE)
    if "image_encoder" not in freeze:  # the encoder runs forward and backward every epoch
        per_epoch += 3 * encode_image
    if "text_encoder" not in freeze:
        per_epoch += 3 * speed.fusion * TEXT_MS * data.rows / 1000
    return encode_image + encode_text + epochs * per_epoch


def stage2_epoch_seconds(
    data: DataProfile, image_size: int, regions: int, blocks: int, speed: Speed = REFERENCE
) -> float:
    """One stage-2 epoch: stage 1's fusion work plus the top ``blocks`` blocks of the image
    encoder, forward and backward for every training image, forward for the validation ones."""
    fusion = speed.fusion * (FUSION_MS_ROW + FUSION_MS_ROW_REGION * regions) * data.rows / 1000
    image_ms = speed.encoder * ENCODE_MS_224 * (image_size / 224) ** 2
    top = image_ms * sum(LITE0_BLOCK_SHARE[-blocks:]) * data.images / 1000
    return (fusion + 3 * top) * (1 + VALIDATION_SHARE)


def stage2_seconds(
    data: DataProfile, image_size: int, regions: int, settings: TrainSettings, speed: Speed = REFERENCE
) -> float:
    """Stage 2 in all: encoding each copy below the trained blocks once, then its epochs."""
    below = 1 - sum(LITE0_BLOCK_SHARE[-settings.stage2_blocks :])
    image_ms = speed.encoder * ENCODE_MS_224 * (image_size / 224) ** 2
    setup = image_ms * below * data.images * settings.augment_views / 1000
    return setup + settings.stage2_epochs * stage2_epoch_seconds(
        data, image_size, regions, settings.stage2_blocks, speed
    )


def format_seconds(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"
