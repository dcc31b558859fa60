"""How labelled rows are split into training and validation rows without sharing a source.

A question about an image the model trained on says little about new images: its validation
score would be the training score. The same holds for a copy of that image (re-saved, turned
upside down, in black and white, a burst shot) and for any photo of the same product, patient
or scene. So a split holds out whole groups, every row of each:

- with a group column (``train --group-column C``), the rows that share a value of C;
- without one, the rows that share an image, and images that look near-identical are merged
  into one group (``near_duplicate_groups``: small grey thumbnails compared as they are and
  turned upside down, so a copy in black and white or rotated by 180 degrees is found too;
  images under MIN_SIDE pixels are not compared: at that size different pictures look alike).

The same seed gives the same split (training, the out-of-scope fitting after it and a resumed
run all see the rows the first run saw). ``Split.describe()`` says how it was made, for the
pre-flight report, the training record and the model card, and warns when the validation
images still look close to training images (then the validation score flatters the model).
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .csv_table import Dataset, Example

THUMB = 16  # thumbnail side in pixels: enough to tell photos apart, cheap to compare
DUPLICATE_CORRELATION = 0.95  # thumbnails this alike are one picture (copies, burst shots)
CLOSE_CORRELATION = 0.85  # a validation image this alike to a training image is "close"
CLOSE_SHARE = 0.3  # warn when more than this share of validation images are close
MAX_COMPARED = 8_000  # images compared (beyond it, each image is its own group; the warning still samples)
MIN_SIDE = 2 * THUMB  # smaller images (icons, 8x8 scans) are alike at this scale without being copies


@dataclass
class Split:
    train: list[Example]
    val: list[Example]
    method: str  # "validation file", "group column", "image"
    groups: int = 0  # groups the split chose from
    merged_images: int = 0  # images merged into another image's group as near-identical
    close_share: float | None = None  # validation images that look close to a training image
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.method == "validation file":
            text = f"validation rows from the validation file ({len(self.val)} rows)"
        elif self.method == "group column":
            text = f"validation: whole groups of the group column held out ({self.groups} groups, {len(self.val)} rows)"
        elif self.method == "far images":
            text = (
                f"validation: the images least like any other held out ({self.groups} groups of images,"
                f" {len(self.val)} rows)"
            )
            if self.merged_images:
                text += f"; {self.merged_images} near-identical images kept with the image they copy"
        else:
            text = f"validation: whole images held out ({self.groups} groups of images, {len(self.val)} rows)"
            if self.merged_images:
                text += f"; {self.merged_images} near-identical images kept with the image they copy"
        return "; ".join([text, *self.notes])

    def record(self) -> dict:
        return {
            "method": self.method,
            "groups": self.groups,
            "train_rows": len(self.train),
            "val_rows": len(self.val),
            "merged_images": self.merged_images,
            "close_validation_share": self.close_share,
            "description": self.describe(),
        }


def split_by_image(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Hold out ``fraction`` of the images (with all their rows) for validation."""
    split = _split_groups(examples, {e.image: str(e.image) for e in examples}, fraction, seed)
    return split.train, split.val


def make_split(dataset: Dataset, val_dataset: Dataset | None, val_fraction: float, seed: int) -> Split:
    """The training and validation rows of a run: ``val_dataset``'s rows when one is given, else
    a ``val_fraction`` split of ``dataset`` by group (module docstring)."""
    if val_dataset is not None:
        return Split(dataset.examples, val_dataset.examples, "validation file")
    examples = dataset.examples
    if any(e.group for e in examples):
        group_of = {e.image: e.group or f"image:{e.image}" for e in examples}
        keys = {(e.image, e.group) for e in examples}
        if len(keys) > len(group_of):  # one image under two groups: the image wins, all its rows together
            group_of = _merge_image_groups(examples)
        split = _split_groups(examples, group_of, val_fraction, seed)
        split.method = "group column"
    else:
        images = sorted({e.image for e in examples})
        leader = near_duplicate_groups(tuple(images))
        group_of = {image: str(leader[image]) for image in images}
        split = _split_groups(examples, group_of, val_fraction, seed)
        split.merged_images = sum(1 for image in images if leader[image] != image)
        split.close_share = close_share(split)
        if split.close_share is not None and split.close_share > CLOSE_SHARE:
            # crops or versions of the same pictures: hold out those least like any other image
            # instead, as a test on new parts of the pictures would be
            far = _far_split(examples, images, group_of, val_fraction, seed)
            far.merged_images, far.method = split.merged_images, "far images"
            far.close_share = close_share(far)
            far.notes.append(
                f"{split.close_share:.0%} of randomly chosen validation images looked close to a training image"
                " (crops or versions of the same pictures?), so the validation images are those least like any"
                " other image"
            )
            split = far
    if split.close_share is None:
        split.close_share = close_share(split)
    if split.close_share is not None and split.close_share > CLOSE_SHARE:
        split.notes.append(
            f"{split.close_share:.0%} of the validation images look close to a training image (crops or versions"
            " of the same pictures?): the validation score may flatter the model; name the source of each row with"
            " a group column"
        )
    return split


def train_val_split(
    dataset: Dataset, val_dataset: Dataset | None, val_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    split = make_split(dataset, val_dataset, val_fraction, seed)
    return split.train, split.val


class UnionFind:
    """Disjoint sets of hashable keys: ``join`` merges two keys' sets, ``find`` names a key's set."""

    def __init__(self):
        self.parent: dict = {}

    def find(self, x):
        parent = self.parent
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def join(self, a, b) -> None:
        self.parent[self.find(a)] = self.find(b)


def _merge_image_groups(examples: list[Example]) -> dict:
    """Groups that share an image become one group (union-find over images and group values)."""
    sets = UnionFind()
    for e in examples:
        if e.group:
            sets.join(("image", e.image), ("group", e.group))
    return {e.image: str(sets.find(("image", e.image))) for e in examples}


def _split_groups(examples: list[Example], group_of: dict, fraction: float, seed: int) -> Split:
    """Whole groups, in a seeded random order, until ``fraction`` of the rows (of the groups,
    when all are the same size) are held out; at least one group on each side."""
    sizes = Counter(group_of[e.image] for e in examples)
    groups = sorted(sizes)
    rng = random.Random(seed)
    rng.shuffle(groups)
    if len(set(sizes.values())) <= 1:
        n_val = max(1, round(len(groups) * fraction)) if len(groups) > 1 else 0
    else:
        n_val, held = 0, 0
        while n_val < len(groups) - 1 and held < fraction * len(examples):
            held += sizes[groups[n_val]]
            n_val += 1
    val_groups = set(groups[:n_val])
    train = [e for e in examples if group_of[e.image] not in val_groups]
    val = [e for e in examples if group_of[e.image] in val_groups]
    return Split(train, val, "image", groups=len(groups))


def _far_split(examples: list[Example], images: list[Path], group_of: dict, fraction: float, seed: int) -> Split:
    """Whole groups held out in the order of how unlike any image of another group they are
    (the highest thumbnail correlation with one, lowest first; ties in a seeded random order)
    until ``fraction`` of the rows are: the validation images are then as new to the model as
    crops from parts of the pictures it never saw (blocked cross-validation's idea for data
    whose rows are not independent)."""
    thumbs = _thumbnails(tuple(images))
    group = np.array([group_of[image] for image in images])
    nearest = np.full(len(images), -1.0, np.float32)  # each image's highest correlation with another group's
    for lo in range(0, len(images), 1024):
        sims = _similarity(thumbs[lo : lo + 1024], thumbs)
        sims[group[lo : lo + 1024, None] == group[None, :]] = -1.0
        nearest[lo : lo + 1024] = sims.max(axis=1)
    likeness: dict = {}
    for g, value in zip(group, nearest):
        likeness[g] = max(likeness.get(g, -1.0), float(value))
    rng = random.Random(seed)
    order = sorted(likeness, key=lambda g: (round(likeness[g], 2), rng.random()))
    # within each kind of group (the answers its rows carry), so every answer keeps its share of
    # the validation rows; one kind when nearly every group is a kind of its own
    answers: dict = {}
    for e in examples:
        answers.setdefault(group_of[e.image], set()).add(e.label)
    kind = {g: frozenset(a) for g, a in answers.items()}
    if len(set(kind.values())) > len(kind) / 3:
        kind = dict.fromkeys(kind, frozenset())
    sizes = Counter(group_of[e.image] for e in examples)
    rows_of_kind = Counter()
    for g, n in sizes.items():
        rows_of_kind[kind[g]] += n
    val_groups, held = set(), Counter()
    for g in order:
        if held[kind[g]] + sizes[g] / 2 <= fraction * rows_of_kind[kind[g]]:
            val_groups.add(g)
            held[kind[g]] += sizes[g]
    if not val_groups or len(val_groups) == len(order):  # too few groups to choose from: the farthest one
        val_groups = {order[0]}
    train = [e for e in examples if group_of[e.image] not in val_groups]
    val = [e for e in examples if group_of[e.image] in val_groups]
    return Split(train, val, "far images", groups=len(likeness))


@functools.lru_cache(maxsize=65536)
def _thumbnail(path: Path) -> np.ndarray:
    """A THUMB x THUMB grey thumbnail, zero mean and unit length (so a dot product is a correlation)."""
    try:
        with Image.open(path) as im:
            if min(im.size) < MIN_SIDE:
                return np.zeros(THUMB * THUMB, np.float32)  # flat: never merged, never "close"
            im.draft("L", (THUMB * 4, THUMB * 4))  # JPEG: decode at a fraction of the size
            pixels = np.asarray(im.convert("L").resize((THUMB, THUMB), Image.BILINEAR), np.float32).ravel()
    except (OSError, ValueError):
        return np.zeros(THUMB * THUMB, np.float32)
    pixels -= pixels.mean()
    norm = float(np.linalg.norm(pixels))
    return pixels / norm if norm > 1e-6 else pixels


@functools.lru_cache(maxsize=4)
def _thumbnails(images: tuple[Path, ...]) -> np.ndarray:
    return np.stack([_thumbnail(p) for p in images]) if images else np.zeros((0, THUMB * THUMB), np.float32)


def _similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Correlation of each thumbnail of ``a`` with each of ``b``, as it is or turned upside down."""
    upside_down = b.reshape(-1, THUMB, THUMB)[:, ::-1, ::-1].reshape(len(b), -1)
    return np.maximum(a @ b.T, a @ upside_down.T)


def near_duplicate_groups(images: tuple[Path, ...], threshold: float = DUPLICATE_CORRELATION) -> dict[Path, Path]:
    """Each image's group leader: the first earlier leader (in ``images``' order) it is
    near-identical to, else itself. Not transitive: a chain of overlapping crops does not grow
    into one group per photo, which would hold out a whole photo (and what it shows) at once.
    Flat images (no contrast, or too small to compare) are never merged."""
    leader = {image: image for image in images}
    if len(images) < 2 or len(images) > MAX_COMPARED:
        return leader
    thumbs = _thumbnails(images)
    flat = np.linalg.norm(thumbs, axis=1) < 0.5
    leaders: list[int] = []
    for i in range(len(images)):
        if not flat[i] and leaders:
            sims = _similarity(thumbs[i : i + 1], thumbs[leaders])[0]
            best = int(np.argmax(sims))
            if sims[best] >= threshold:
                leader[images[i]] = images[leaders[best]]
                continue
        if not flat[i]:
            leaders.append(i)
    return leader


def close_share(split: Split, threshold: float = CLOSE_CORRELATION, sample: int = 2000) -> float | None:
    """The share of validation images whose thumbnail correlates at least ``threshold`` with a
    training image's (up to ``sample`` of each side are compared); None without both."""
    val = sorted({e.image for e in split.val})
    train = sorted({e.image for e in split.train})
    if not val or not train:
        return None
    rng = random.Random(0)
    val = rng.sample(val, min(sample, len(val)))
    train = rng.sample(train, min(5 * sample, len(train)))
    a, b = np.stack([_thumbnail(p) for p in val]), np.stack([_thumbnail(p) for p in train])
    if not np.linalg.norm(a, axis=1).any():  # all too small or flat to compare
        return None
    return round(float((_similarity(a, b).max(axis=1) >= threshold).mean()), 3)
