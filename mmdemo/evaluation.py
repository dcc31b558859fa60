"""The Sort-of-CLEVR benchmark: accuracy per question type and whether heatmaps point at the
right object, on freshly generated scenes (``python -m mmdemo bench-sort-of-clevr``).

Figures:
- accuracy on canonical wording (the paper's questions) per question type, non-relational
  and relational; the same on held-out phrasings the model never saw in training;
- pointing: for non-relational questions, how often the aggregated heatmap's peak lies inside
  the asked-about object's 10x10 box; for closest / furthest, how often it lies on the
  referenced object or on the answer object; for each explanation method.
"""

from __future__ import annotations

import csv
import time
from collections import defaultdict
from pathlib import Path

from .checkpoint import load_checkpoint
from .data import read_csv
from .explain import METHODS
from .imaging import decode_image
from .service import Predictor
from .sortofclevr import NON_RELATIONAL, QUESTION_TYPES, RADIUS, RELATIONAL, generate
from .train import evaluate_model


def _inside(x: float, y: float, cx: str, cy: str) -> bool:
    return cx != "" and abs(x - float(cx)) <= RADIUS and abs(y - float(cy)) <= RADIUS


def accuracy_by_type(rows: list[dict], predictions: list[str]) -> dict:
    hits = defaultdict(list)
    for row, predicted in zip(rows, predictions):
        hits[row["qtype"]].append(predicted == row["label"])
    per_type = {q: sum(hits[q]) / len(hits[q]) for q in QUESTION_TYPES if hits[q]}
    group = lambda types: [h for q in types for h in hits[q]]  # noqa: E731
    return {
        "n": len(rows),
        "accuracy": sum(p == r["label"] for r, p in zip(rows, predictions)) / len(rows),
        "non_relational": sum(group(NON_RELATIONAL)) / max(1, len(group(NON_RELATIONAL))),
        "relational": sum(group(RELATIONAL)) / max(1, len(group(RELATIONAL))),
        "per_type": per_type,
    }


def pointing(predictor: Predictor, root: Path, rows: list[dict], method: str, batch_size: int = 64) -> dict:
    images = {name: decode_image(root / name) for name in {r["image"] for r in rows}}
    on_target = defaultdict(list)
    on_reference, on_answer, on_either = defaultdict(list), defaultdict(list), defaultdict(list)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        results = predictor.predict_batch([images[r["image"]] for r in batch], [r["text"] for r in batch], method)
        for row, result in zip(batch, results):
            x, y = result.explanation.peak_xy
            hit_target = _inside(x, y, row["target_x"], row["target_y"])
            if row["qtype"] in NON_RELATIONAL:
                on_target[row["qtype"]].append(hit_target)
            elif row["qtype"] in ("closest", "furthest"):
                hit_answer = _inside(x, y, row["answer_x"], row["answer_y"])
                on_reference[row["qtype"]].append(hit_target)
                on_answer[row["qtype"]].append(hit_answer)
                on_either[row["qtype"]].append(hit_target or hit_answer)
    mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else None  # noqa: E731
    all_target = [h for q in on_target for h in on_target[q]]
    return {
        "non_relational_peak_in_box": mean(all_target),
        "per_type_peak_in_box": {q: mean(v) for q, v in on_target.items()},
        "closest_furthest": {
            q: {"on_reference": mean(on_reference[q]), "on_answer": mean(on_answer[q]), "on_either": mean(on_either[q])}
            for q in ("closest", "furthest")
        },
    }


def sort_of_clevr_benchmark(
    checkpoint: Path, n_images: int, seed: int, workdir: Path, device: str | None = None
) -> dict:
    start = time.perf_counter()
    workdir = Path(workdir)
    sets = {
        "canonical": generate(workdir / f"canonical-{seed}-{n_images}", n_images, seed, "canonical"),
        "held_out_phrasing": generate(workdir / f"held-out-{seed + 1}-{n_images}", n_images, seed + 1, "held-out"),
    }
    model = load_checkpoint(checkpoint)
    result: dict = {"checkpoint": str(checkpoint), "images": n_images, "seed": seed}
    for name, csv_path in sets.items():
        rows = list(csv.DictReader(open(csv_path, newline="")))
        report = evaluate_model(model, read_csv(csv_path, check_images=False).examples, device)
        result[name] = accuracy_by_type(rows, report["predictions"])
    predictor = Predictor.from_checkpoint(checkpoint, device)
    rows = list(csv.DictReader(open(sets["canonical"], newline="")))
    result["pointing"] = {m: pointing(predictor, sets["canonical"].parent, rows, m) for m in METHODS}
    result["seconds"] = round(time.perf_counter() - start, 1)
    return _rounded(result)


def _rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value
