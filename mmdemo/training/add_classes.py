"""Teaching a checkpoint new classes from a few examples each, in seconds on a CPU, without a
training run over its old data.

``add_classes(AddClassesRequest)`` writes a new checkpoint (the starting one is never changed)
whose labels are the old ones followed by the new ones:

1. Encode once: the new rows' images (and augmented copies of them, with the augmentation the
   starting checkpoint's recipe chose for its data) and texts go through the frozen encoders,
   as training's feature cache does (features.py).
2. Imprint (Qi et al. 2018, "Low-shot learning with imprinted weights"): each new class's row of
   the head's last layer starts as the normalised mean of its examples' penultimate
   representations, so the class is answerable before any step.
3. Replay, when rows of the old classes can be read (``replay``: the training CSV named in the
   starting checkpoint's record, or any CSV of the same task): a few hundred steps on the cached
   features train the fusion's text layers and the head on the new rows, upweighted, together
   with a small class-balanced sample of old rows (``REPLAY_PER_CLASS``) whose answers are held
   to the starting model's (knowledge distillation), so that the old classes do not get worse.
   Without old rows only the new classes' head rows are fitted, against class impressions of the
   old classes (``impressions``: points of the head's input that the starting head gives each old
   class with high confidence), which protects the old classes less (the record says so).
4. Calibrate: the temperature is fitted on held-out rows the steps never saw (old replay rows,
   and the new rows' predictions from a model taught without them, two folds), so the new
   classes' confidence is measured, not assumed.
5. Out-of-scope statistics: the image Gaussian takes in the new images and their re-encodings,
   the text checks the new texts and label words; the image threshold is raised, if needed, to
   what the new images need (scope_fit.py's margin).

``python -m mmdemo add-classes`` and the app's Teach tab call ``add_classes``; ``python -m
mmdemo bench-add-classes`` measures it against a full fine-tune (docs/add-classes.md).
"""

from __future__ import annotations

import copy
import shlex
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..datasets.csv_table import Dataset, Example
from ..device import resolve_device
from ..inference.scope import (
    ScopeStats,
    load_scope,
    mahalanobis,
    pooled_image,
    pooled_text,
    words,
)
from ..model.checkpoint import load_checkpoint, read_card, save_checkpoint
from ..model.classifier import MultimodalClassifier
from ..model.preprocess import normalize_pixels
from .augment import augment, augment_views
from .calibration import calibration_report, fit_temperature
from .features import Encoded
from .scope_fit import IMAGE_MARGIN, reencoded_image_vecs, save_scope
from .settings import Progress, TrainSettings

MAX_EXAMPLES = 50  # rows per new label: more is a data set, for ``train --init``
FEW_EXAMPLES = 20  # the method is built and measured for 1-20 rows per label
REPLAY_PER_CLASS = 60  # old rows per old label replayed (sampled from the replay CSV)
CALIBRATION_PER_CLASS = 10  # further old rows per old label, held out for the temperature
AUGMENT_COPIES = 32  # copies of each new image (the first as it is), each encoded once
STEPS = 100  # steps on the cached features with replay (the two calibration folds take half as many)
NEW_WEIGHT = 1.0  # the new rows' loss weight against a replay batch's (measured against 0.5 and 3 on digit scans)
REPLAY_BATCH = 96  # old rows per step: measured against 48 and 128 on digit scans (more new-label accuracy)
TEACH_SECONDS = 20.0  # the replay steps stop here on a slower machine or a bigger model (the folds: half)
TEXT_TEACHER_MAX = 64  # distinct texts whose image-masked answers are held (a sample of them)
TEXT_BATCH = 16  # distinct texts per step whose image-masked answers are held to the starting model's
LR = 3e-4  # measured against 5e-4 and 1e-3 on digit scans: less forgetting, more new-label accuracy
TRAINED = ("fusion.layers", "fusion.norm", "head")  # what replay steps train: the text layers and the head
IMPRINT_NORM = 1.0  # imprinted rows' norm, in units of the old rows' mean norm
METHODS = ("auto", "replay", "imprint")


@dataclass
class AddClassesRequest:
    init: Path  # the starting checkpoint (never changed)
    dataset: Dataset  # the new rows: image, text, label
    out: Path  # the new checkpoint folder
    replay: Dataset | None = None  # rows of the old classes (see ``replay_csv``); None: no replay
    method: str = "auto"  # auto: replay when ``replay`` has rows of old classes, else imprint
    known_labels: str = "add"  # rows with a label the model has: "add" (more examples of it) or "refuse"
    task: str | None = None  # the task the new labels go to, for a checkpoint with several
    steps: int = STEPS
    seed: int = 0
    overwrite: bool = False
    description: str = ""
    command: str | None = None
    device: str | None = None
    cpu_threads: int | None = None


@dataclass
class AddClassesResult:
    checkpoint: Path
    record: dict
    warnings: list[str] = field(default_factory=list)


def replay_csv(checkpoint: Path) -> Path | None:
    """The training CSV a checkpoint's record names (``csv``, or ``train --csv`` in its command,
    relative to the current folder) when it is still there."""
    record = read_card(checkpoint)
    if record.get("csv") and Path(record["csv"]).is_file():
        return Path(record["csv"])
    command = record.get("command", "")
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    for i, arg in enumerate(argv[:-1]):
        if arg == "--csv":
            path = Path(argv[i + 1])
            return path if path.is_file() else None
    return None


def check_request(request: AddClassesRequest, labels: list[str]) -> tuple[list[str], list[str]]:
    """(new labels in order of first appearance, warnings); ValueError for what cannot be taught."""
    rows = request.dataset.examples
    if not rows:
        raise ValueError(f"{request.dataset.csv_path.name}: no usable rows to teach from")
    counts = Counter(e.label for e in rows)
    known = sorted(set(counts) & set(labels))
    new = [label for label in dict.fromkeys(e.label for e in rows) if label not in labels]
    if not new:
        raise ValueError(
            f"every label in {request.dataset.csv_path.name} ({', '.join(sorted(counts))}) is one the model"
            " already answers, so nothing was taught: teaching adds new labels (to improve the ones it has, fine-tune it)"
        )
    if known and request.known_labels == "refuse":
        raise ValueError(
            f"the model already answers {', '.join(known)}: rows with these labels are refused, nothing was taught"
        )
    warnings = []
    if known:
        warnings.append(
            f"the model already answers {', '.join(known)}: those rows are added to its examples of them"
            " (they also keep the new classes from taking over those answers)"
        )
    for label in new:
        n = counts[label]
        if n > MAX_EXAMPLES:
            raise ValueError(
                f"label {label!r} has {n} rows, more than {MAX_EXAMPLES}: that is a data set; fine-tune the model"
                " on it instead"
            )
        if n == 1:
            warnings.append(f"label {label!r} has one example only: its answers will be unreliable; 5 or more help")
        elif n > FEW_EXAMPLES:
            warnings.append(f"label {label!r} has {n} rows; the method is built for 1-{FEW_EXAMPLES}")
    return new, warnings


# -- features ------------------------------------------------------------------------------------
class Rows:
    """Rows with their encoder outputs cached once; ``copies`` > 1 also caches augmented copies of
    each image (``settings``' augmentation), one drawn per row and step."""

    def __init__(
        self,
        model: MultimodalClassifier,
        examples: list[Example],
        labels: list[str],
        device: torch.device,
        settings: TrainSettings | None = None,
        copies: int = 1,
        seed: int = 0,
    ):
        self.examples = examples
        self.targets = torch.tensor([labels.index(e.label) for e in examples])
        self.cache = Encoded(model, examples, device, lambda event: None)
        config = model.config
        views = copies if settings is not None else 1
        if settings is not None and views > 1:
            aug = TrainSettings(**{**settings.__dict__, "augment_views": views})
            params = augment_views(len(self.cache.pixels), aug, torch.Generator().manual_seed(seed))
        else:
            params = None
        maps, pixels = [], []
        with torch.no_grad():
            for v in range(views):
                px = (
                    self.cache.pixels
                    if params is None
                    else augment(self.cache.pixels, params[v]).round().to(torch.uint8)
                )
                pixels.append(px)
                if params is None and self.cache.features is not None:  # a frozen encoder: cached already
                    maps.append(self.cache.features)
                    continue
                maps.append(
                    torch.cat(
                        [
                            model.encode_image(normalize_pixels(chunk, config).to(device)).float().cpu()
                            for chunk in px.split(64)
                        ]
                    )
                )
            if self.cache.text_states is None:  # a trained text encoder: its states are cached here too
                self.cache.text_states = model.encode_text(
                    self.cache.input_ids.to(device), self.cache.attention_mask.to(device)
                ).float()
        self.copies = torch.stack(maps)  # (V, N_img, C, h, w) encoder outputs
        self.pixel_copies = torch.stack(pixels)  # (V, N_img, 3, S, S) uint8, what the patch embedding sees
        self.device = device
        self.show(None)

    def __len__(self) -> int:
        return len(self.examples)

    def show(self, generator: torch.Generator | None) -> None:
        """Serve each image as a random copy (``generator``) or as it is (None)."""
        n = self.copies.shape[1]
        if generator is None or len(self.copies) == 1:
            view = torch.zeros(n, dtype=torch.long)
        else:
            view = torch.randint(len(self.copies), (n,), generator=generator)
        self.cache.features = self.copies[view, torch.arange(n)]
        self.cache.pixels = self.pixel_copies[view, torch.arange(n)]

    def output(self, model: MultimodalClassifier, rows: torch.Tensor, text_only: bool = False):
        """The model's output on ``rows`` with the copies ``show`` chose (``text_only``: with the
        image masked, as the out-of-scope check's image-reliance test asks)."""
        fm, px, ts, mask, index = self.cache.batch(model, rows, self.device)
        drop = torch.ones(len(rows), dtype=torch.bool, device=self.device) if text_only else None
        return model.forward_fusion(fm, ts, mask, drop_image=drop, image_index=index, pixels=px)

    def text_rows(self) -> torch.Tensor:
        """One row per distinct text (a text-only answer depends on the text alone)."""
        first: dict[int, int] = {}
        for i, t in enumerate(self.cache.rows_text.tolist()):
            first.setdefault(t, i)
        return torch.tensor(list(first.values()))

    def logits(self, model: MultimodalClassifier, batch: int = 512) -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            self.show(None)
            return torch.cat([self.output(model, r).logits.float() for r in torch.arange(len(self)).split(batch)])

    def penultimate(self, model: MultimodalClassifier) -> torch.Tensor:
        """(N, D) the head's input to its last layer, per row (the original images)."""
        model.eval()
        cache, out = self.cache, []
        self.show(None)
        with torch.no_grad():
            for rows in torch.arange(len(self)).split(512):
                fm, px, ts, mask, index = cache.batch(model, rows, self.device)
                summary, _, _ = model.fusion(fm, ts, mask, None, None, index, px)
                out.append(model.head[:-1](summary).float())
        return torch.cat(out)


# -- the head ------------------------------------------------------------------------------------
def widen_head(model: MultimodalClassifier, new_labels: list[str]) -> MultimodalClassifier:
    """A copy of ``model`` whose head answers ``new_labels`` too: the old rows of the last layer
    copied, the new rows zero (``imprint`` fills them)."""
    model = copy.deepcopy(model)
    old = model.head[-1]
    last = nn.Linear(old.in_features, old.out_features + len(new_labels))
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.weight[: old.out_features] = old.weight
        last.bias[: old.out_features] = old.bias
    model.head[-1] = last.to(old.weight.device)
    model.config.labels = list(model.config.labels) + list(new_labels)
    return model


def imprint(
    model: MultimodalClassifier,
    z: torch.Tensor,
    targets: torch.Tensor,
    first_new: int,
    z_old: torch.Tensor | None = None,
) -> None:
    """Set each new class's last-layer row from its rows' penultimate representations ``z`` (N, D)
    (Qi et al. 2018): the normalised mean, less the old rows' mean ``z_old`` where there are old
    rows (a representation after a ReLU points the same way for every input, so the plain mean
    would win everywhere), scaled to the old rows' mean norm. The bias puts the new logit, at the
    mean of the new rows, level with the mean of the starting model's top logit there: the new
    class starts as a contender on its rows, not a winner everywhere."""
    last = model.head[-1]
    with torch.no_grad():
        weight_old, bias_old = last.weight[:first_new], last.bias[:first_new]
        scale = IMPRINT_NORM * float(weight_old.norm(dim=1).mean())
        centre = z_old.mean(0) if z_old is not None and len(z_old) else torch.zeros(z.shape[1])
        for c in range(first_new, last.out_features):
            mine = z[targets == c]
            if len(mine):
                row = F.normalize(mine.mean(0) - centre, dim=0) * scale
                top = (mine @ weight_old.T + bias_old).max(1).values.mean()
                last.weight[c] = row
                last.bias[c] = top - row @ mine.mean(0)


def impressions(
    weight: torch.Tensor, bias: torch.Tensor, starts: torch.Tensor, confidence: float = 0.99, steps: int = 100
):
    """Class impressions of the old classes in the head's last-layer input space: from each of
    ``starts`` (N, D), moved until the old rows (``weight`` (L, D), ``bias`` (L,)) give class c
    ``confidence``; returns (L * N, D) points and their classes. Stand-ins for old rows when none
    can be read: they mark where the new rows must not win."""
    points, classes = [], []
    floor = float(np.log(confidence))
    for c in range(len(weight)):
        z = starts.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=0.05)
        for _ in range(steps):
            loss = -F.log_softmax(z @ weight.T + bias, -1)[:, c].clamp(max=floor).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        points.append(z.detach())
        classes.append(torch.full((len(starts),), c))
    return torch.cat(points), torch.cat(classes)


def fit_new_rows(
    model: MultimodalClassifier, z: torch.Tensor, targets: torch.Tensor, first_new: int, steps: int
) -> None:
    """Imprint-only method: fit the new rows of the last layer (the old rows held fixed) on the
    new rows' representations against class impressions of the old classes."""
    last = model.head[-1]
    weight_old, bias_old = last.weight[:first_new].detach(), last.bias[:first_new].detach()
    negatives, negative_targets = impressions(weight_old, bias_old, z)
    w_new = last.weight[first_new:].detach().clone().requires_grad_(True)
    b_new = last.bias[first_new:].detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([w_new, b_new], lr=1e-2)
    x = torch.cat([z, negatives])
    y = torch.cat([targets, negative_targets])
    weight = torch.cat([torch.full((len(z),), 1 / len(z)), torch.full((len(negatives),), 1 / len(negatives))])
    for _ in range(steps):
        logits = x @ torch.cat([weight_old, w_new]).T + torch.cat([bias_old, b_new])
        loss = (F.cross_entropy(logits, y, reduction="none") * weight).sum() + 1e-3 * w_new.square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        last.weight[first_new:] = w_new
        last.bias[first_new:] = b_new


def replay_steps(
    model: MultimodalClassifier,
    start: MultimodalClassifier,
    new: Rows,
    replay: Rows,
    teacher_logits: torch.Tensor,
    first_new: int,
    steps: int,
    seed: int,
    budget_s: float | None = None,
) -> int:
    """``steps`` steps (fewer when ``budget_s`` seconds have passed; returns how many) of the fusion's text layers and the head on every new row (a random
    augmented copy of its image each step, loss weight NEW_WEIGHT) plus a batch of replayed old
    rows (cross-entropy, and the starting model's answers on them, distilled). The answers
    with the image masked are held to the starting model's on each distinct text, the new
    labels getting none of them: a new label must come from the image, never from the question
    alone (the out-of-scope check flags answers that ignore the image)."""
    generator = torch.Generator().manual_seed(seed)
    text_rows = replay.text_rows()
    text_rows = text_rows[torch.randperm(len(text_rows), generator=generator)[:TEXT_TEACHER_MAX]]
    with torch.no_grad():
        text_teacher = torch.cat(
            [F.softmax(replay.output(start, rows, text_only=True).logits.float(), -1) for rows in text_rows.split(256)]
        )
        text_teacher = F.pad(text_teacher, (0, model.head[-1].out_features - first_new))
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(TRAINED))
        if p.requires_grad:
            params.append(p)
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    everything = torch.arange(len(new))
    model.train()
    began, done = time.monotonic(), 0
    for _ in range(steps):
        new.show(generator)
        loss = NEW_WEIGHT * F.cross_entropy(new.output(model, everything).logits, new.targets)
        rows = torch.randint(len(replay), (min(REPLAY_BATCH, len(replay)),), generator=generator)
        logits = replay.output(model, rows).logits
        loss = loss + F.cross_entropy(logits, replay.targets[rows])
        loss = loss + F.kl_div(
            F.log_softmax(logits[:, :first_new], -1),
            F.log_softmax(teacher_logits[rows], -1),
            log_target=True,
            reduction="batchmean",
        )
        texts = torch.randperm(len(text_rows), generator=generator)[:TEXT_BATCH]
        text_only = replay.output(model, text_rows[texts], text_only=True).logits
        loss = loss + F.kl_div(F.log_softmax(text_only, -1), text_teacher[texts], reduction="batchmean")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        done += 1
        if budget_s is not None and time.monotonic() - began > budget_s:
            break
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return done


def teach(
    start: MultimodalClassifier,
    new_labels: list[str],
    new: Rows,
    replay: Rows | None,
    teacher_logits: torch.Tensor | None,
    method: str,
    steps: int,
    seed: int,
    budget_s: float | None = None,
) -> tuple[MultimodalClassifier, int]:
    """The starting model widened to ``new_labels``, imprinted and fitted by ``method``, and the
    steps it took (replay stops after ``budget_s`` seconds)."""
    first_new = len(start.config.labels)
    model = widen_head(start, new_labels)
    model.eval()
    z = new.penultimate(model)
    imprint(model, z, new.targets, first_new, replay.penultimate(model) if replay is not None else None)
    if method == "replay":
        steps = replay_steps(model, start, new, replay, teacher_logits, first_new, steps, seed, budget_s)
    else:
        fit_new_rows(model, z, new.targets, first_new, steps)
    return model, steps


# -- the whole path ------------------------------------------------------------------------------
def add_classes(request: AddClassesRequest, progress: Progress | None = None) -> AddClassesResult:
    """Teach, calibrate, fit the scope and save the new checkpoint; ValueError for rows that
    cannot be taught (see ``check_request``)."""
    progress = progress or (lambda event: None)
    started = time.monotonic()
    out = Path(request.out)
    if request.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {request.method!r}")
    if out.exists() and not request.overwrite:
        raise ValueError(f"{out.name} already exists; choose another name or allow overwriting")
    if Path(request.init).resolve() == out.resolve():
        raise ValueError("the new checkpoint must be another folder: the starting checkpoint is never changed")
    threads = torch.get_num_threads()
    if request.cpu_threads:
        torch.set_num_threads(request.cpu_threads)
    try:
        return _add_classes(request, progress, started, out)
    finally:
        torch.set_num_threads(threads)


def _add_classes(request: AddClassesRequest, progress: Progress, started: float, out: Path) -> AddClassesResult:
    device = resolve_device(request.device)
    start = load_checkpoint(request.init, device)
    tasks = start.config.task_names()
    if request.task is not None and len(tasks) == 1:
        raise ValueError(
            f"{Path(request.init).name} answers one task only; leave out the task (it names one of a checkpoint's"
            " several tasks)"
        )
    if request.task is not None and request.task != tasks[0]:
        known = request.task in tasks
        raise ValueError(
            f"{Path(request.init).name}: new labels can be taught to its first task, {tasks[0]!r}, only"
            + (
                f"; to teach {request.task!r} new labels, fine-tune on data with them"
                if known
                else f"; it has no task {request.task!r} (its tasks: {', '.join(tasks)})"
            )
        )
    for p in start.parameters():
        p.requires_grad_(False)
    old_labels = list(start.config.labels)
    new_labels, warnings = check_request(request, old_labels)
    labels = old_labels + new_labels
    record_of_start = read_card(request.init)
    settings = _augmentation(record_of_start)

    replay_rows, calibration_rows = _replay_sample(request.replay, old_labels, request.seed)
    method = request.method
    if len(tasks) > 1:  # replay steps move the fusion that every task's head reads: the other tasks would drift
        if method == "replay":
            raise ValueError(
                f"{Path(request.init).name} answers {len(tasks)} tasks: the replay method would change the answers"
                " of the others; use --method imprint (or auto)"
            )
        method = "imprint"
        warnings.append(
            f"taught to the task {tasks[0]!r} by imprinting only (its head's new rows): the other tasks'"
            f" answers ({', '.join(tasks[1:])}) are unchanged"
        )
    elif method == "auto":
        method = "replay" if replay_rows else "imprint"
    if method == "replay" and not replay_rows:
        raise ValueError("the replay method needs rows of the old classes (a replay CSV with the model's labels)")
    if method == "imprint" and len(tasks) == 1:
        warnings.append(
            "no rows of the old classes to replay: only the new classes' head rows were fitted, which protects"
            " the old classes less (give the training CSV with --replay-csv)"
        )
    progress({"stage": "encode", "message": f"encoding {len(request.dataset.examples)} new rows"})
    new = Rows(start, request.dataset.examples, labels, device, settings, AUGMENT_COPIES, request.seed)
    replay = Rows(start, replay_rows, labels, device) if replay_rows else None
    held_out = Rows(start, calibration_rows, labels, device) if calibration_rows else None
    teacher = replay.logits(start) if replay else None

    progress({"stage": "teach", "message": f"teaching {', '.join(new_labels)} ({method})"})
    taught_at = time.monotonic()
    model, steps = teach(start, new_labels, new, replay, teacher, method, request.steps, request.seed, TEACH_SECONDS)
    teach_seconds = time.monotonic() - taught_at

    progress({"stage": "calibrate", "message": "fitting the temperature on held-out rows"})
    val_logits, val_targets, calibration_data = _held_out_logits(
        start, model, new_labels, new, replay, teacher, held_out, method, request, settings
    )
    model.config.temperature = start.config.temperature
    calibration = None
    if len(val_targets):
        # never sharper than the starting model's: the held-out rows are mostly old rows the model
        # answers surely, and a new label taught from a few examples is answered less surely than them
        temperature = max(fit_temperature(val_logits, val_targets), start.config.temperature)
        calibration = calibration_report(val_logits, val_targets, temperature)
        calibration["data"] = calibration_data
        model.config.temperature = temperature

    counts = Counter(e.label for e in request.dataset.examples)
    new_logits = new.logits(model)
    record = {
        "description": request.description
        or f"{request.init.name} taught {', '.join(new_labels)} from a few examples with mmdemo add-classes.",
        "data": f"{request.dataset.csv_path.name}: {len(request.dataset.examples)} rows",
        "init": Path(request.init).name,
        "added_classes": {label: counts[label] for label in new_labels},
        "added_to_known_classes": {label: n for label, n in counts.items() if label in old_labels},
        "method": _method_text(method, steps, replay_rows),
        "replay": f"{request.replay.csv_path.name}: {len(replay_rows)} rows replayed, {len(calibration_rows)} held out"
        if replay_rows
        else "none",
        "seconds": None,
        "teach_seconds": round(teach_seconds, 1),
        "metrics": {
            "new_rows_accuracy": float((new_logits.argmax(1) == new.targets).float().mean()),
            **_held_out_metrics(val_logits, val_targets, len(old_labels)),
        },
        "start_record": {k: record_of_start[k] for k in ("data", "init", "metrics") if k in record_of_start},
        "warnings": warnings,
    }
    if calibration:
        record["calibration"] = calibration
    if request.command:
        record = {"command": request.command, **record}
    record["seconds"] = round(time.monotonic() - started, 1)
    progress({"stage": "save", "message": f"saving {out.name}"})
    save_checkpoint(model, out, training=record, overwrite=request.overwrite)
    stats = load_scope(request.init)
    if stats is not None:
        progress({"stage": "scope", "message": "updating the out-of-scope statistics"})
        save_scope(out, update_scope(stats, model, new, request.seed, device))
    return AddClassesResult(out, record, warnings)


def _augmentation(record: dict) -> TrainSettings | None:
    """The augmentation the starting checkpoint's recipe chose for its data (None: none recorded)."""
    saved = record.get("settings")
    if not isinstance(saved, dict):
        return None
    keep = {k: v for k, v in saved.items() if k.startswith("augment_") and k in TrainSettings.__dataclass_fields__}
    if not keep.get("augment_shift") and not keep.get("augment_zoom", 1.0) < 1.0:
        keep["augment_shift"] = 0.06  # a small shift keeps any image's meaning
    return TrainSettings(**keep)


def _replay_sample(replay: Dataset | None, labels: list[str], seed: int) -> tuple[list[Example], list[Example]]:
    """(replayed rows, held-out rows): up to REPLAY_PER_CLASS and CALIBRATION_PER_CLASS rows of
    each old label, the held-out ones from other images than the replayed ones."""
    if replay is None:
        return [], []
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[Example]] = {}
    for e in replay.examples:
        if e.label in labels:
            by_label.setdefault(e.label, []).append(e)
    train, held = [], []
    images_used: set = set()
    for label in labels:
        rows = by_label.get(label, [])
        order = rng.permutation(len(rows))
        picked = [rows[i] for i in order[:REPLAY_PER_CLASS]]
        train += picked
        images_used |= {e.image for e in picked}
    for label in labels:
        rows = [e for e in by_label.get(label, []) if e.image not in images_used]
        order = rng.permutation(len(rows))
        held += [rows[i] for i in order[:CALIBRATION_PER_CLASS]]
    return train, held


def _held_out_logits(start, model, new_labels, new, replay, teacher, held_out, method, request, settings):
    """Logits and targets of rows the final model's steps never saw: the held-out old rows, and
    each new row as predicted by a model taught without it (two folds, when each new label has
    two rows or more)."""
    logits, targets, parts = [], [], []
    if held_out is not None:
        logits.append(held_out.logits(model))
        targets.append(held_out.targets)
        parts.append(f"{len(held_out)} held-out rows of the old classes")
    counts = Counter(new.targets.tolist())
    first_new = len(start.config.labels)
    if all(counts.get(c, 0) >= 2 for c in range(first_new, first_new + len(new_labels))):
        fold = torch.zeros(len(new), dtype=torch.long)
        for c in counts:
            mine = torch.nonzero(new.targets == c).flatten()
            fold[mine[torch.randperm(len(mine), generator=torch.Generator().manual_seed(request.seed))[::2]]] = 1
        fold_logits = torch.zeros(len(new), len(start.config.labels) + len(new_labels))
        for k in (0, 1):
            train_idx = torch.nonzero(fold != k).flatten()
            test_idx = torch.nonzero(fold == k).flatten()
            part = _subset(new, train_idx)
            taught, _ = teach(
                start,
                new_labels,
                part,
                replay,
                teacher,
                method,
                max(1, request.steps // 2),
                request.seed + 1 + k,
                TEACH_SECONDS / 2,
            )
            fold_logits[test_idx] = _subset(new, test_idx).logits(taught)
        logits.append(fold_logits)
        targets.append(new.targets)
        parts.append(f"the {len(new)} new rows, each predicted by a model taught without it (two folds)")
    if not logits:
        return torch.zeros(0, len(model.config.labels)), torch.zeros(0, dtype=torch.long), ""
    return torch.cat(logits), torch.cat(targets), " and ".join(parts)


def _subset(rows: Rows, index: torch.Tensor) -> Rows:
    """The same cached rows, only those at ``index`` (the caches are shared, not copied)."""
    part = copy.copy(rows)
    part.examples = [rows.examples[i] for i in index.tolist()]
    part.targets = rows.targets[index]
    part.cache = copy.copy(rows.cache)
    part.cache.rows_image = rows.cache.rows_image[index]
    part.cache.rows_text = rows.cache.rows_text[index]
    part.cache.labels = [rows.cache.labels[i] for i in index.tolist()]
    return part


def _held_out_metrics(logits: torch.Tensor, targets: torch.Tensor, first_new: int) -> dict:
    if not len(targets):
        return {}
    right = logits.argmax(1) == targets
    out = {}
    old, new = targets < first_new, targets >= first_new
    if old.any():
        out["held_out_old_accuracy"] = float(right[old].float().mean())
    if new.any():
        out["held_out_new_accuracy"] = float(right[new].float().mean())
    return out


def _method_text(method: str, steps: int, replay_rows: list) -> str:
    if method == "replay":
        return (
            f"imprinted head rows (Qi et al. 2018), then {steps} steps of the fusion's text layers and the head on"
            f" the new rows ({AUGMENT_COPIES} augmented copies of each image) with {len(replay_rows)} replayed old"
            " rows held to the starting model's answers (distillation)"
        )
    return (
        "imprinted head rows (Qi et al. 2018) fitted against class impressions of the old classes;"
        " the rest of the model unchanged"
    )


# -- out-of-scope statistics -----------------------------------------------------------------------
def update_scope(
    stats: ScopeStats, model: MultimodalClassifier, new: Rows, seed: int, device: torch.device
) -> ScopeStats:
    """The starting checkpoint's statistics with the new rows taken in: the image Gaussian's
    moments combined with the new images' and their re-encodings' (weighted by how many images
    each side has), the new texts in the text bank and vocabulary, the new labels' words known;
    the image threshold raised to IMAGE_MARGIN x the farthest new image or re-encoding if that
    is farther."""
    stats = copy.copy(stats)
    cache = new.cache
    images = list(cache.image_index)
    with torch.no_grad():
        vecs = pooled_image(new.copies[0])
    reencoded = reencoded_image_vecs(model, images, seed, device)
    x = torch.cat([vecs, reencoded]) if len(reencoded) else vecs
    if stats.version == 1:
        x = x[:, : x.shape[1] // 2]
    fitted = stats.fitted_on
    n_old = float(fitted.get("images", 0) + fitted.get("reencoded_images", 0)) or float(len(x))
    covariance = torch.linalg.inv(stats.image_precision.double())
    mean = stats.image_mean.double()
    second = n_old * (covariance + torch.outer(mean, mean)) + x.double().T @ x.double()
    total = n_old + len(x)
    new_mean = (n_old * mean + x.double().sum(0)) / total
    new_cov = second / total - torch.outer(new_mean, new_mean)
    stats.image_mean = new_mean.float()
    stats.image_precision = torch.linalg.inv(new_cov).float()
    farthest = float(mahalanobis(x, stats.image_mean, stats.image_precision).max())
    stats.image_threshold = max(stats.image_threshold, IMAGE_MARGIN * farthest)

    texts = list(cache.text_index)
    with torch.no_grad():
        text_vecs = pooled_text(cache.text_states, cache.attention_mask)
    stats.text_bank = torch.cat([stats.text_bank.float(), text_vecs.float()])
    seen = set(stats.vocabulary)
    stats.vocabulary = list(stats.vocabulary) + [
        w for w in dict.fromkeys(w for t in texts for w in words(t)) if w not in seen
    ]
    stats.label_words = sorted(set(stats.label_words) | {w for label in model.config.labels for w in words(label)})
    stats.slots = [_widen_slot(slot, texts) for slot in stats.slots]
    stats.fitted_on = {
        **fitted,
        "added_images": len(images),
        "added_reencoded_images": len(reencoded),
        "added_texts": len(texts),
    }
    return stats


def _widen_slot(slot: dict, texts: list[str]) -> dict:
    """A slot of the scope statistics (a set of words, such as the colours, that training texts
    hold a given number of times, next to given words) that also takes the new texts' wording:
    a question taught with its new label is not "unlike the training questions"."""
    slot = {key: list(value) for key, value in slot.items()}
    members = set(slot["words"])
    for text in texts:
        ws = words(text)
        n = sum(w in members for w in ws)
        if n not in slot["counts"]:
            slot["counts"].append(n)
        for i, w in enumerate(ws):
            if w in members:
                for side, j in (("left", i - 1), ("right", i + 1)):
                    if 0 <= j < len(ws) and ws[j] not in slot[side]:
                        slot[side].append(ws[j])
    return slot
