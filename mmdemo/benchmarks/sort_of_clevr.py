"""The Sort-of-CLEVR benchmark: accuracy per question type and whether heatmaps point at the
right object, on freshly generated scenes (``python -m mmdemo bench-sort-of-clevr``).

Figures:
- accuracy on canonical wording (the paper's questions) per question type, non-relational
  and relational; the same on held-out phrasings the model never saw in training;
- pointing: for non-relational questions, how often the aggregated heatmap's peak lies inside
  the asked-about object's 10x10 box; for closest / furthest, how often it lies on the
  referenced object or on the answer object; for each explanation method;
- calibration: ECE and the reliability table of the calibrated confidence on the canonical
  questions;
- faithfulness: mean deletion / insertion areas and the model-randomisation check for both
  explanation methods on a sample of the canonical questions (evaluation.engine.faithfulness).
"""

from __future__ import annotations

import csv
import time
from collections import defaultdict
from pathlib import Path

from ..datasets.csv_table import read_csv
from ..datasets.sortofclevr import NON_RELATIONAL, QUESTION_TYPES, RADIUS, RELATIONAL, generate
from ..explain.methods import METHODS
from ..imaging import decode_image
from ..inference.predictor import Predictor
from ..model.checkpoint import load_checkpoint
from ..training.scoring import evaluate_model


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


def calibration_report(model, examples: list, device: str | None = None) -> dict:
    """ECE (15 equal-width bins) and the reliability table of the model's calibrated top-label
    confidence (softmax(logits / temperature)) on labelled examples."""
    import torch

    from ..device import resolve_device
    from ..metrics import reliability, reliability_rows
    from ..training.features import Encoded
    from ..training.scoring import predict_encoded

    device = resolve_device(device)
    labels = model.config.labels
    known = [e for e in examples if e.label in labels]
    logits = predict_encoded(model.to(device), Encoded(model, known, device, lambda event: None), device)
    confidence, predicted = (logits / model.config.temperature).softmax(-1).max(-1)
    correct = (predicted == torch.tensor([labels.index(e.label) for e in known])).float().numpy()
    table = reliability(confidence.tolist(), correct.tolist())
    return {
        "temperature": model.config.temperature,
        "ece": table["ece"],
        "mean_confidence": float(confidence.mean()),
        "accuracy": float(correct.mean()),
        "bins": reliability_rows(table),
    }


FAITHFULNESS_ROWS = 100  # questions whose heatmaps bench-sort-of-clevr measures, spread over the set


def faithfulness_report(
    checkpoint: Path, root: Path, rows: list[dict], n: int = FAITHFULNESS_ROWS, device: str | None = None
) -> dict:
    """Per explanation method, over ``n`` rows spread evenly over the set: mean deletion area
    (hottest first and random order), mean insertion area, and the mean rank correlation between
    the heatmap and the heatmap of the same model with its fusion re-initialised (Adebayo et al.
    2018); the same measurement as ``evaluate`` (evaluation.engine.faithfulness)."""
    from ..evaluation.engine import faithfulness

    predictor = Predictor.from_checkpoint(checkpoint, device)
    return faithfulness(checkpoint, predictor, [(root / r["image"], r["text"]) for r in rows], n)


PARTS = ("accuracy", "calibration", "pointing", "faithfulness")


def sort_of_clevr_benchmark(
    checkpoint: Path,
    n_images: int,
    seed: int,
    workdir: Path,
    device: str | None = None,
    parts: tuple[str, ...] = PARTS,
    faithfulness_rows: int = FAITHFULNESS_ROWS,
) -> dict:
    """The benchmark's ``parts`` (all by default) on fresh scenes."""
    start = time.perf_counter()
    workdir = Path(workdir)
    sets = {
        "canonical": generate(workdir / f"canonical-{seed}-{n_images}", n_images, seed, "canonical"),
        "held_out_phrasing": generate(workdir / f"held-out-{seed + 1}-{n_images}", n_images, seed + 1, "held-out"),
    }
    model = load_checkpoint(checkpoint)
    result: dict = {"checkpoint": str(checkpoint), "images": n_images, "seed": seed}
    if "accuracy" in parts:
        for name, csv_path in sets.items():
            rows = list(csv.DictReader(open(csv_path, newline="")))
            report = evaluate_model(model, read_csv(csv_path, check_images=False).examples, device)
            result[name] = accuracy_by_type(rows, report["predictions"])
    if "calibration" in parts:
        examples = read_csv(sets["canonical"], check_images=False).examples
        result["calibration"] = calibration_report(model, examples, device)
    rows = list(csv.DictReader(open(sets["canonical"], newline="")))
    if "pointing" in parts:
        predictor = Predictor.from_checkpoint(checkpoint, device)
        result["pointing"] = {m: pointing(predictor, sets["canonical"].parent, rows, m) for m in METHODS}
    if "faithfulness" in parts:
        result["faithfulness"] = faithfulness_report(
            checkpoint, sets["canonical"].parent, rows, faithfulness_rows, device
        )
    result["seconds"] = round(time.perf_counter() - start, 1)
    return rounded(result)


def rounded(value):
    """Floats rounded to 4 places, in nested dicts too: the figures as printed."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return value
