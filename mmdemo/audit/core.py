"""``run_audit``: a labelled Dataset in, findings out; the CLI (``python -m mmdemo audit``) and
the app call it, with a progress callback and a ``should_stop`` asked between phases.

Phases, each ending in a progress event and a stop check:
1. every image decoded once and hashed (identical content under another name);
2. the frozen encoders' features, cached once (training/features.py ``Encoded``), with the
   encoders and the image size the training recipe would choose (or a checkpoint's);
3. label issues: a small head (pooled image features + text embedding -> the answers of each
   question) trained in K folds of whole sources (folds.py), so every row is predicted by a
   head that never saw its image or anything copying it; confident learning on those
   out-of-fold probabilities (confident.py). A second round trains without the rows the first
   flagged, so the wrong labels pull the heads less;
4. near-duplicates, leaks into a test CSV and outlying images, from the same features.

``score`` is a quality: the lower, the surer the problem (a label issue's is the out-of-fold
probability of its given label; an identical copy's 0). The figures behind the settings come
from ``python -m mmdemo bench-audit`` (docs/audit.md, docs/benchmarks.md).
"""

from __future__ import annotations

import csv
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..datasets.csv_table import Dataset, Example, check_trainable
from ..training.features import Encoded
from ..training.settings import Progress, Stopped
from .confident import find_label_issues
from .duplicates import content_hash, near_pairs, nearest, same_content, standardise, unit_rows
from .folds import assign_folds, sources

ISSUES = ("duplicate", "label", "leak", "mismatch", "near_duplicate", "outlier")  # the order of audit.csv
COLUMNS = ("row", "image", "text", "label", "issue", "score", "suggested_label", "duplicate_of")
POOLED_GRID = 4  # image feature maps pooled to at most 4x4 regions: where the strokes are, in few numbers
FREE_FORM = ""  # the question group of texts asked fewer than min_question_rows times


@dataclass(frozen=True)
class AuditSettings:
    folds: int = 5
    rounds: int = 2  # the second trains without the rows the first flagged
    ensembles: int = 2  # fold assignments whose out-of-fold probabilities are averaged
    epochs: int = 30
    min_steps: int = 200  # more epochs for a small data set, so its head is not left untrained
    hidden: int = 256
    dropout: float = 0.5  # strong: a head that cannot memorise a wrong label judges it better
    weight_decay: float = 0.01
    lr: float = 3e-3
    batch_size: int = 512
    seed: int = 0
    min_question_rows: int = 20  # a text asked this often is a question of its own (as recipe.imbalance)
    near_duplicate: float = 0.97  # cosine of standardised features; distinct digit scans reach 0.95
    outlier_z: float = 6.0  # robust z-score of the distance to the nearest images
    outlier_neighbours: int = 5


@dataclass
class Finding:
    row: int  # the spreadsheet row of the audited CSV (header = 1)
    image: str  # as written in the CSV
    text: str
    label: str
    issue: str  # one of ISSUES
    score: float  # quality: the lower, the surer the problem
    suggested_label: str = ""  # label issues
    duplicate_of: str = ""  # the other image as written in its CSV (duplicates and leaks)


@dataclass
class AuditResult:
    findings: list[Finding]
    rows: int
    images: int
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase
    notes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        counts = Counter(f.issue for f in self.findings)
        return {issue: counts.get(issue, 0) for issue in ISSUES}

    def summary(self) -> str:
        counts = self.counts
        lines = [f"audited {self.rows:,} rows ({self.images:,} images) in {self.seconds:.0f} s"]
        names = {
            "label": "rows whose label looks wrong",
            "duplicate": "images with an identical copy under another name",
            "near_duplicate": "images near-identical to another",
            "leak": "training images also in the test CSV",
            "mismatch": "rows whose image and text do not match",
            "outlier": "images unlike the rest",
        }
        lines += [f"  {counts[i]:>6,} {names[i]}" for i in ("label", "duplicate", "near_duplicate", "leak", "outlier")]
        return "\n".join(lines + self.notes)


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """By issue, then score (surest first), then row."""
    return sorted(findings, key=lambda f: (f.issue, f.score, f.row, f.duplicate_of))


def write_audit_csv(findings: list[Finding], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for x in sort_findings(findings):
            writer.writerow(
                [x.row, x.image, x.text, x.label, x.issue, f"{x.score:.4f}", x.suggested_label, x.duplicate_of]
            )


def written_images(dataset: Dataset, image_column: str = "image") -> dict[int, str]:
    """Each accepted row's image path as written in the CSV (audit.csv names images so)."""
    wanted = {e.row for e in dataset.examples}
    written: dict[int, str] = {}
    try:
        with open(dataset.csv_path, newline="", encoding="utf-8-sig") as f:
            for row, values in enumerate(csv.DictReader(f, delimiter=dataset.separator), start=2):
                if row in wanted and values.get(image_column):
                    written[row] = values[image_column].strip()
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    root = dataset.csv_path.resolve().parent
    for e in dataset.examples:  # a column read under another name: the path relative to the CSV
        if e.row not in written:
            written[e.row] = e.image.relative_to(root).as_posix() if e.image.is_relative_to(root) else str(e.image)
    return written


def run_audit(
    dataset: Dataset,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    test: Dataset | None = None,
    checkpoint: Path | None = None,
    device: str | None = None,
    settings: AuditSettings = AuditSettings(),
    image_column: str = "image",
) -> AuditResult:
    """Audit ``dataset`` (and its leaks into ``test``); ``checkpoint``: use its encoders and image
    size instead of the recipe's. Raises ``Stopped`` when ``should_stop()`` turns true between
    phases (or between Encoded's chunks), ValueError for data that cannot be audited."""
    from ..device import resolve_device

    report = progress or (lambda event: None)
    stop = should_stop or (lambda: False)
    start = time.perf_counter()
    phases: dict[str, float] = {}
    clock = [start]

    def phase_done(name: str, message: str) -> None:
        now = time.perf_counter()
        phases[name] = round(now - clock[0], 2)
        clock[0] = now
        report({"stage": "audit", "phase": name, "message": message})
        if stop():
            raise Stopped(f"audit stopped after {name}; nothing was written")

    check_trainable(dataset)
    examples = dataset.examples
    images = list(dict.fromkeys(e.image for e in examples))  # in CSV order
    if len(images) < settings.folds:
        raise ValueError(
            f"{dataset.csv_path.name}: {len(images)} distinct images; the audit needs at least {settings.folds}"
        )
    written = written_images(dataset, image_column)
    first_row = {}
    for e in examples:
        first_row.setdefault(e.image, e)
    hashes = {image: content_hash(image) for image in images}
    copies = same_content(images, hashes)
    phase_done("hash images", f"{len(images):,} images decoded; {len(copies):,} have an identical copy")

    model = _encoder_model(dataset, checkpoint)
    run_device = resolve_device(device)
    model.to(run_device)
    encoded = Encoded(model, examples, run_device, report, should_stop=stop)
    image_features = _pooled(encoded.features)  # (N_img, D) in encoded.image_index order
    text_features = _text_embedding(encoded.text_states, encoded.attention_mask)  # (N_txt, E)
    phase_done("encode", f"features of {len(images):,} images and {len(encoded.text_index):,} texts")

    findings: list[Finding] = []
    keys = sources(examples, copies)
    assign_folds(keys, settings.folds, settings.seed)  # ValueError before any training when too few sources
    labels = _label_findings(examples, encoded, image_features, text_features, keys, settings, report, stop, written)
    findings += labels
    phase_done("labels", f"{len(labels):,} rows whose label looks wrong")

    def finding(image: Path, issue: str, score: float, other: str) -> Finding:
        e = first_row[image]
        return Finding(e.row, written[e.row], e.text, e.label, issue, round(score, 4), "", other)

    for image, other in copies.items():
        findings.append(finding(image, "duplicate", 0.0, written[first_row[other].row]))
    index = [encoded.image_index[image] for image in images]
    unit = unit_rows(image_features[index])  # (N_img, D) in CSV order
    for image, (other, similarity) in near_pairs(images, unit, settings.near_duplicate, set(copies)).items():
        findings.append(finding(image, "near_duplicate", 1 - similarity, written[first_row[other].row]))
    if test is not None:
        leaks = _leaks(images, hashes, unit, image_features[index], test, model, run_device, settings, report, stop)
        for image, (other, similarity) in leaks.items():
            findings.append(finding(image, "leak", 1 - similarity, other))
    for image, z in _outliers(images, unit, set(copies), settings).items():
        findings.append(finding(image, "outlier", 1 / (1 + z), ""))
    phase_done("images", "duplicates, leaks and outliers")
    result = AuditResult(
        sort_findings(findings), len(examples), len(images), round(time.perf_counter() - start, 1), phases
    )
    if test is not None:
        result.notes.append(f"leaks: compared with the {len(test.examples):,} rows of {test.csv_path.name}")
    return result


def _encoder_model(dataset: Dataset, checkpoint: Path | None):
    """The model whose frozen encoders give the features: a checkpoint's, or a new model with
    the pretrained encoders at the image size the training recipe would choose."""
    from ..model.checkpoint import load_checkpoint
    from ..model.classifier import PARTS, ModelConfig, build_model
    from ..training.recipe import image_size_for, profile

    if checkpoint is not None:
        model = load_checkpoint(checkpoint)
        # the audit only reads the encoders: cache both, whatever the checkpoint trained
        model.config.frozen = list(PARTS)
        return model
    size, _ = image_size_for(profile(dataset).image_side)
    return build_model(ModelConfig(labels=dataset.labels, image_size=size, image_stride=16))


def _pooled(features: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) feature maps -> (N, C * g * g), average-pooled to a grid of at most POOLED_GRID."""
    grid = min(POOLED_GRID, features.shape[-1])
    return F.adaptive_avg_pool2d(features.float(), grid).flatten(1)


def _text_embedding(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, T, E) token states -> (N, E), the mean over real tokens (MiniLM's sentence embedding)."""
    m = mask[:, : states.shape[1]].float().unsqueeze(-1)
    return (states.float() * m).sum(1) / m.sum(1).clamp(min=1)


class QuestionClasses:
    """The classes that compete: (question, answer) pairs, a question being a text asked at least
    ``min_rows`` times, or all rarer texts together (FREE_FORM)."""

    def __init__(self, examples: list[Example], min_rows: int):
        asked = Counter(e.text for e in examples)
        self.question = [e.text if asked[e.text] >= min_rows else FREE_FORM for e in examples]
        self.keys = sorted(set(zip(self.question, (e.label for e in examples))))
        index = {k: i for i, k in enumerate(self.keys)}
        self.given = np.array([index[k] for k in zip(self.question, (e.label for e in examples))])
        questions = sorted(set(self.question))
        q_index = {q: i for i, q in enumerate(questions)}
        self.row_question = np.array([q_index[q] for q in self.question])
        allowed = np.zeros((len(questions), len(self.keys)), bool)
        for (q, _), i in index.items():
            allowed[q_index[q], i] = True
        self.allowed = allowed[self.row_question]  # (N, K)


def _label_findings(
    examples, encoded, image_features, text_features, keys, settings: AuditSettings, report, stop, written
) -> list[Finding]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small head: threads that wait for each other on busy cores cost more than they give
    try:
        return _judge_labels(examples, encoded, image_features, text_features, keys, settings, report, stop, written)
    finally:
        torch.set_num_threads(threads)


def _judge_labels(
    examples, encoded, image_features, text_features, keys, settings: AuditSettings, report, stop, written
) -> list[Finding]:
    classes = QuestionClasses(examples, settings.min_question_rows)
    image_rows = encoded.rows_image.numpy()
    inputs_text = text_features[encoded.rows_text]  # (N, E)
    excluded = np.zeros(len(examples), bool)
    total, done = settings.rounds * settings.ensembles * settings.folds, 0
    for r in range(settings.rounds):
        probs = np.zeros(classes.allowed.shape)
        for m in range(settings.ensembles):  # other folds each time: the mean is steadier than one split's
            folds = assign_folds(keys, settings.folds, settings.seed + m)
            for f in range(settings.folds):
                test_rows = folds == f
                train_rows = ~test_rows & ~excluded
                probs[test_rows] += _fit_predict(
                    image_features, image_rows, inputs_text, classes, train_rows, test_rows, settings,
                    seed=100 * r + 10 * m + f,
                ) / settings.ensembles  # fmt: skip
                done += 1
                report({"stage": "label folds", "done": done, "total": total})
                if done < total and stop():
                    raise Stopped(f"audit stopped while judging labels (fold {done}/{total}); nothing was written")
        found = find_label_issues(probs, classes.given, classes.allowed)
        excluded = found.issue
    out = []
    for i in np.flatnonzero(found.issue):
        e = examples[i]
        suggested = classes.keys[found.suggested[i]][1]
        out.append(Finding(e.row, written[e.row], e.text, e.label, "label", round(float(found.self_confidence[i]), 4),
                           suggested))  # fmt: skip
    return out


def _fit_predict(
    image_features: torch.Tensor,
    image_rows: np.ndarray,
    text_rows: torch.Tensor,
    classes: QuestionClasses,
    train_rows: np.ndarray,
    test_rows: np.ndarray,
    settings: AuditSettings,
    seed: int,
) -> np.ndarray:
    """Train the head on ``train_rows`` and return the probabilities of ``test_rows`` (each row's
    over its question's answers). Image features are standardised with the training fold's."""
    train_images = torch.from_numpy(np.unique(image_rows[train_rows]))
    scaled = standardise(image_features, image_features[train_images])
    x = torch.cat([scaled[torch.from_numpy(image_rows)], text_rows], 1)  # (N, D + E)
    y = torch.from_numpy(classes.given)
    allowed = torch.from_numpy(classes.allowed)
    generator = torch.Generator().manual_seed(settings.seed * 1000 + seed)
    torch.manual_seed(settings.seed * 1000 + seed)
    head = nn.Sequential(
        nn.Dropout(settings.dropout),
        nn.Linear(x.shape[1], settings.hidden),
        nn.GELU(),
        nn.Dropout(settings.dropout),
        nn.Linear(settings.hidden, len(classes.keys)),
    )
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    train_index = torch.from_numpy(np.flatnonzero(train_rows))
    head.train()
    epochs = max(settings.epochs, math.ceil(settings.min_steps / math.ceil(len(train_index) / settings.batch_size)))
    for _ in range(epochs):
        order = train_index[torch.randperm(len(train_index), generator=generator)]
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            logits = head(x[batch]).masked_fill(~allowed[batch], -1e9)  # only the question's answers compete
            loss = F.cross_entropy(logits, y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    head.eval()
    test_index = torch.from_numpy(np.flatnonzero(test_rows))
    with torch.no_grad():
        logits = head(x[test_index]).masked_fill(~allowed[test_index], -1e9)
        return torch.softmax(logits, 1).numpy()


def _leaks(images, hashes, unit, features, test: Dataset, model, device, settings, report, stop) -> dict:
    """Training image -> (the test image it is, as written in the test CSV; similarity)."""
    from ..datasets.splits import near_duplicate_groups

    test_images = [i for i in dict.fromkeys(e.image for e in test.examples)]
    if not test_images:
        return {}
    test_written = written_images(test)
    test_first = {}
    for e in test.examples:
        test_first.setdefault(e.image, test_written[e.row])
    by_hash: dict[str, Path] = {}
    for image in test_images:
        by_hash.setdefault(content_hash(image), image)
    found: dict[Path, tuple[str, float]] = {}
    for image in images:
        if hashes[image] in by_hash:
            found[image] = (test_first[by_hash[hashes[image]]], 1.0)
    both = tuple(images) + tuple(i for i in test_images if i not in set(images))
    for image, leader in near_duplicate_groups(both).items():  # training images come first: they lead
        if image in test_first and leader in hashes and leader != image and leader not in found:
            found[leader] = (test_first[image], 0.95)
    encoded = Encoded(model, test.examples, device, report, should_stop=stop)
    test_features = _pooled(encoded.features)[[encoded.image_index[i] for i in test_images]]
    test_unit = unit_rows(test_features, features)  # standardised as the training ones, so the cosines compare
    values, indices = nearest(test_unit, unit, exclude_self=False)
    for t, image in enumerate(test_images):
        train_image = images[int(indices[t, 0])]
        if float(values[t, 0]) >= settings.near_duplicate and train_image not in found:
            found[train_image] = (test_first[image], float(values[t, 0]))
    return found


def _outliers(images: list[Path], unit: torch.Tensor, skip: set[Path], settings: AuditSettings) -> dict[Path, float]:
    """Image -> robust z-score of its mean distance to its nearest images, for those at or over
    ``settings.outlier_z`` (the median and the median absolute deviation as the centre and scale)."""
    if len(images) <= settings.outlier_neighbours + 1:
        return {}
    values, _ = nearest(unit, unit, exclude_self=True, k=settings.outlier_neighbours)
    distance = (1 - values.mean(1)).numpy()
    centre = np.median(distance)
    scale = 1.4826 * np.median(np.abs(distance - centre)) + 1e-9
    z = (distance - centre) / scale
    return {image: float(z[i]) for i, image in enumerate(images) if z[i] >= settings.outlier_z and image not in skip}
