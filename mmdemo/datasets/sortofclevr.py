"""Sort-of-CLEVR (Santoro et al. 2017): scenes, questions, answers, and a CSV writer.

Spec (followed exactly, so independently generated test sets match):
- 75x75 RGB, white background; six objects, one per colour; each a square (centre +- 5 px)
  or a circle (radius 5 px), 50/50; integer centres uniform in [5, 70) on each axis, every
  pair at least 10 px apart.
- Non-relational: shape (circle | square), left/right (x < 37.5 -> left), top/bottom
  (y < 37.5 -> top). Relational: shape of the closest object, shape of the furthest object,
  number of objects with the same shape (1-6, counting itself).
- Distance ties (equal squared distances) are broken by colour order: the first colour in
  COLORS wins. With integer centres they happen, rarely.

Questions come in several phrasings per type. ``PHRASINGS[qtype]`` lists the training ones,
the canonical (paper) wording first; ``HELD_OUT`` holds phrasings never trained on, to
measure how the model copes with a stakeholder's own wording.

The writer produces the standard CSV layout (image,text,label + an images folder) plus
columns the benchmark reads: qtype, relational, color, target_x/y (the asked-about object's
centre) and answer_x/y (the closest / furthest object's centre).
"""

from __future__ import annotations

import csv
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 75
RADIUS = 5
MIN_DISTANCE = 10
COLORS = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "orange": (255, 156, 0),
    "gray": (128, 128, 128),
    "yellow": (255, 255, 0),
}
NON_RELATIONAL = ("shape", "horizontal", "vertical")
RELATIONAL = ("closest", "furthest", "count")
QUESTION_TYPES = NON_RELATIONAL + RELATIONAL
LABELS = ["circle", "square", "left", "right", "top", "bottom", "1", "2", "3", "4", "5", "6"]

PHRASINGS = {
    "shape": (
        "What shape is the {c} object?",
        "What is the shape of the {c} object?",
        "Which shape does the {c} thing have?",
        "Tell me the shape of the {c} one.",
        "Is the {c} shape round or square?",
    ),
    "horizontal": (
        "Is the {c} object on the left or on the right?",
        "Is the {c} object on the left side or the right side?",
        "Which side is the {c} thing on, left or right?",
        "Does the {c} shape sit to the left or to the right?",
        "Left or right: where is the {c} one?",
    ),
    "vertical": (
        "Is the {c} object at the top or at the bottom?",
        "Is the {c} thing near the top or near the bottom?",
        "Does the {c} shape sit at the top or the bottom?",
        "Is the {c} one in the upper or the lower part, top or bottom?",
        "Top or bottom: where is the {c} object?",
    ),
    "closest": (
        "What shape is the object closest to the {c} object?",
        "What is the shape of the object nearest to the {c} object?",
        "Which shape is the thing closest to the {c} one?",
        "The object nearest the {c} object: what shape is it?",
        "What shape has the object that is closest to the {c} shape?",
    ),
    "furthest": (
        "What shape is the object furthest from the {c} object?",
        "What is the shape of the object farthest from the {c} object?",
        "Which shape is the thing furthest away from the {c} one?",
        "The object most distant from the {c} object: what shape is it?",
        "What shape has the object that is farthest from the {c} shape?",
    ),
    "count": (
        "How many objects have the same shape as the {c} object?",
        "How many objects share the shape of the {c} object?",
        "Count the objects shaped like the {c} one.",
        "What is the number of things with the same shape as the {c} object?",
        "How many shapes are of the same kind as the {c} shape?",
    ),
}
HELD_OUT = {
    "shape": ("Is the {c} item a circle or a square?",),
    "horizontal": ("On which side of the picture is the {c} item?",),
    "vertical": ("Is the {c} item in the upper half or the lower half, top or bottom?",),
    "closest": ("What shape is the nearest object to the {c} item?",),
    "furthest": ("What shape is the most distant object from the {c} item?",),
    "count": ("How many items have the same shape as the {c} item, itself included?",),
}


@dataclass(frozen=True)
class SceneObject:
    color: str
    shape: str  # "circle" | "square"
    x: float
    y: float


Scene = list[SceneObject]


def random_scene(rng: np.random.Generator) -> Scene:
    """Six objects, one per colour, centres in [5, 70) at least 10 px apart."""
    centres: list[tuple[int, int]] = []
    while len(centres) < len(COLORS):
        x, y = (int(v) for v in rng.integers(RADIUS, SIZE - RADIUS, size=2))
        if all((x - a) ** 2 + (y - b) ** 2 >= MIN_DISTANCE**2 for a, b in centres):
            centres.append((x, y))
    shapes = rng.integers(0, 2, size=len(COLORS))
    return [
        SceneObject(color, "circle" if s == 0 else "square", x, y) for color, s, (x, y) in zip(COLORS, shapes, centres)
    ]


def render(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for obj in scene:
        box = (obj.x - RADIUS, obj.y - RADIUS, obj.x + RADIUS, obj.y + RADIUS)
        if obj.shape == "square":
            draw.rectangle(box, fill=COLORS[obj.color])
        else:
            draw.ellipse(box, fill=COLORS[obj.color])
    return image


def _by_color(scene: Scene, color: str) -> SceneObject:
    for obj in scene:
        if obj.color == color:
            return obj
    raise ValueError(f"no {color} object in the scene")


def answer(scene: Scene, qtype: str, color: str) -> tuple[str, SceneObject | None]:
    """The answer label, and for closest/furthest the object the answer is about."""
    ref = _by_color(scene, color)
    if qtype == "shape":
        return ref.shape, None
    if qtype == "horizontal":
        return ("left" if ref.x < SIZE / 2 else "right"), None
    if qtype == "vertical":
        return ("top" if ref.y < SIZE / 2 else "bottom"), None
    if qtype == "count":
        return str(sum(obj.shape == ref.shape for obj in scene)), None
    if qtype in ("closest", "furthest"):
        others = [obj for obj in scene if obj is not ref]
        dist = [(obj.x - ref.x) ** 2 + (obj.y - ref.y) ** 2 for obj in others]
        best = min(dist) if qtype == "closest" else max(dist)
        chosen = others[dist.index(best)]  # first in colour order on a tie
        return chosen.shape, chosen
    raise ValueError(f"unknown question type {qtype!r}; expected one of {QUESTION_TYPES}")


def questions(
    scene: Scene, rng: np.random.Generator, phrasings: dict[str, tuple[str, ...]], per_kind: int = 10
) -> list[dict]:
    """``per_kind`` non-relational and ``per_kind`` relational questions about one scene."""
    rows = []
    for kinds in (NON_RELATIONAL, RELATIONAL):
        for _ in range(per_kind):
            qtype = kinds[int(rng.integers(len(kinds)))]
            color = list(COLORS)[int(rng.integers(len(COLORS)))]
            templates = phrasings[qtype]
            text = templates[int(rng.integers(len(templates)))].format(c=color)
            label, answer_obj = answer(scene, qtype, color)
            target = _by_color(scene, color)
            rows.append(
                {
                    "text": text,
                    "label": label,
                    "qtype": qtype,
                    "relational": int(qtype in RELATIONAL),
                    "color": color,
                    "target_x": target.x,
                    "target_y": target.y,
                    "answer_x": answer_obj.x if answer_obj else "",
                    "answer_y": answer_obj.y if answer_obj else "",
                }
            )
    return rows


PHRASING_SETS = {
    "train": PHRASINGS,
    "canonical": {q: p[:1] for q, p in PHRASINGS.items()},
    "held-out": HELD_OUT,
}
FIELDS = ["image", "text", "label", "qtype", "relational", "color", "target_x", "target_y", "answer_x", "answer_y"]


def generate(out_dir: str | Path, n_images: int, seed: int, phrasing: str = "train", per_kind: int = 10) -> Path:
    """Write ``out_dir/images/*.png`` and ``out_dir/data.csv``; returns the CSV path."""
    if phrasing not in PHRASING_SETS:
        raise ValueError(f"phrasing must be one of {sorted(PHRASING_SETS)}, got {phrasing!r}")
    rng = np.random.default_rng(seed)
    with _scene_writer(out_dir, FIELDS) as writer:
        for name, scene in _scenes(out_dir, n_images, rng):
            for row in questions(scene, rng, PHRASING_SETS[phrasing], per_kind):
                writer.writerow({"image": name, **row})
    return Path(out_dir) / "data.csv"


@contextmanager
def _scene_writer(out_dir: str | Path, fields: list[str]):
    """``out_dir/data.csv`` opened with its header written (and ``out_dir/images`` made)."""
    (Path(out_dir) / "images").mkdir(parents=True, exist_ok=True)
    with open(Path(out_dir) / "data.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        yield writer


def _scenes(out_dir: str | Path, n_images: int, rng: np.random.Generator):
    """``n_images`` random scenes, each saved as ``out_dir/images/NNNN.png``: (name, scene)."""
    digits = max(4, math.ceil(math.log10(max(n_images, 2))))
    for i in range(n_images):
        scene = random_scene(rng)
        name = f"images/{i:0{digits}d}.png"
        render(scene).save(Path(out_dir) / name)
        yield name, scene


# several answers per row: one request names one object; each label column is a task about it
TASK_REQUESTS = (
    "Tell me about the {c} object.",
    "Describe the {c} shape.",
    "What about the {c} one?",
    "The {c} object, please.",
    "Look at the {c} thing.",
)
TASK_COLUMNS = {"shape": "shape", "side": "horizontal", "height": "vertical", "nearest_shape": "closest"}


def generate_tasks(out_dir: str | Path, n_images: int, seed: int, per_image: int = 6) -> Path:
    """A data set with several label columns: each row names one object of a scene ("Tell me
    about the red object.") and the columns shape, side, height and nearest_shape answer the
    shape, left/right, top/bottom and closest-object questions about it. ``per_image`` rows
    (distinct colours) per scene. Writes ``out_dir/images/*.png`` and ``out_dir/data.csv``."""
    rng = np.random.default_rng(seed)
    with _scene_writer(out_dir, ["image", "text", *TASK_COLUMNS, "color"]) as writer:
        for name, scene in _scenes(out_dir, n_images, rng):
            for j in rng.permutation(len(COLORS))[:per_image]:
                color = list(COLORS)[int(j)]
                text = TASK_REQUESTS[int(rng.integers(len(TASK_REQUESTS)))].format(c=color)
                answers = {column: answer(scene, qtype, color)[0] for column, qtype in TASK_COLUMNS.items()}
                writer.writerow({"image": name, "text": text, **answers, "color": color})
    return Path(out_dir) / "data.csv"


def write_examples(folder: str | Path, seed: int = 2024) -> Path:
    """Six scenes, one canonical question of each type, for the app's examples gallery:
    ``folder/scene_N.png`` and ``folder/examples.csv`` (image,text,label)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i, qtype in enumerate(QUESTION_TYPES):
        scene = random_scene(rng)
        color = list(COLORS)[i % len(COLORS)]
        name = f"scene_{i + 1}.png"
        render(scene).save(folder / name)
        rows.append(
            {"image": name, "text": PHRASINGS[qtype][0].format(c=color), "label": answer(scene, qtype, color)[0]}
        )
    with open(folder / "examples.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return folder / "examples.csv"


KIND_ANSWERS = {
    "shape": ["circle", "square"],
    "horizontal": ["left", "right"],
    "vertical": ["top", "bottom"],
    "closest": ["circle", "square"],
    "furthest": ["circle", "square"],
    "count": ["1", "2", "3", "4", "5", "6"],
}


def task_spec() -> dict:
    """What a Sort-of-CLEVR model can be asked, as stored in its checkpoint's config.json
    (``task``): the question kinds with their canonical wording and answers, and the colours
    that fill the ``{colour}`` slot. The app builds its "What this model can answer" panel
    and question builder from it."""
    return {
        "name": "Sort-of-CLEVR",
        "summary": "75x75 scenes of six objects (one per colour), each a circle or a square.",
        "slot": {"name": "colour", "values": list(COLORS)},
        "questions": [
            {
                "kind": kind,
                "relational": kind in RELATIONAL,
                "template": PHRASINGS[kind][0].replace("{c}", "{colour}"),
                "answers": KIND_ANSWERS[kind],
            }
            for kind in QUESTION_TYPES
        ],
    }
