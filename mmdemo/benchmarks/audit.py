"""The audit measured where the truth is known: scikit-learn's digit scans
(``make-real-benchmark --kind digits``) with wrong labels injected at several rates (each
replaced by another answer to the same question) and scans copied under other names; the
precision and recall of each issue kind and the seconds taken; optionally the test accuracy of
a model trained on the noisy data against one trained on it without the rows the audit flagged.

``python -m mmdemo bench-audit`` prints it; figures in docs/benchmarks.md.
"""

from __future__ import annotations

import csv
import random
import shutil
from collections import defaultdict
from pathlib import Path

from ..audit.core import Finding, run_audit
from ..datasets.csv_table import read_csv


def inject(clean_csv: Path, out: Path, rate: float, duplicates: int, seed: int = 0) -> dict:
    """A copy of ``clean_csv`` in ``out`` (images linked, not copied) with ``rate`` of its labels
    replaced by another answer to the same question and ``duplicates`` scans copied under new
    names (their rows, with the true labels, appended). Returns the CSV, the spreadsheet rows
    made wrong and the (original, copy) image pairs as written in the CSV."""
    rng = random.Random(seed)
    with open(clean_csv, newline="") as f:
        reader = csv.DictReader(f)
        header, rows = list(reader.fieldnames or []), list(reader)
    out.mkdir(parents=True, exist_ok=True)
    images = out / "images"
    if not images.exists():
        images.symlink_to((clean_csv.parent / "images").resolve(), target_is_directory=True)
    copies_dir = out / "copies"
    copies_dir.mkdir(exist_ok=True)
    answers = defaultdict(set)
    for r in rows:
        answers[r["text"]].add(r["label"])
    wrong = sorted(rng.sample(range(len(rows)), round(rate * len(rows))))
    for i in wrong:
        rows[i]["label"] = rng.choice(sorted(answers[rows[i]["text"]] - {rows[i]["label"]}))
    scans = sorted({r["image"] for r in rows})
    pairs = []
    for k, image in enumerate(rng.sample(scans, duplicates)):
        copy = f"copies/scan_{k:03d}.png"
        shutil.copyfile(clean_csv.parent / image, out / copy)
        pairs.append((image, copy))
        true_rows = [r for i, r in enumerate(_read(clean_csv)) if r["image"] == image]
        rows += [{**r, "image": copy} for r in true_rows]
    path = out / "train.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, header)
        writer.writeheader()
        writer.writerows(rows)
    return {"csv": path, "wrong_rows": {i + 2 for i in wrong}, "pairs": pairs}


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def score_labels(findings: list[Finding], wrong_rows: set[int], rows: int) -> dict:
    flagged = {f.row for f in findings if f.issue == "label"}
    hits = len(flagged & wrong_rows)
    return {
        "flagged": len(flagged),
        "wrong": len(wrong_rows),
        "precision": round(hits / len(flagged), 3) if flagged else None,
        "recall": round(hits / len(wrong_rows), 3) if wrong_rows else None,
        "flagged_share": round(len(flagged) / rows, 4),
    }


def score_duplicates(findings: list[Finding], pairs: list[tuple[str, str]]) -> dict:
    """A pair is found when each image has a ``duplicate`` row naming the other."""
    named = {(f.image, f.duplicate_of) for f in findings if f.issue == "duplicate"}
    found = sum((a, b) in named and (b, a) in named for a, b in pairs)
    injected = {x for pair in pairs for x in pair}
    right = sum(1 for image, _ in named if image in injected)
    return {
        "pairs": len(pairs),
        "pairs_found": found,
        "recall": round(found / len(pairs), 3) if pairs else None,
        "precision": round(right / len(named), 3) if named else None,
        "near_duplicate_rows": sum(1 for f in findings if f.issue == "near_duplicate"),
        "outlier_rows": sum(1 for f in findings if f.issue == "outlier"),
    }


def audit_benchmark(
    workdir: Path,
    rates: list[float],
    duplicates: int = 15,
    seed: int = 0,
    train_minutes: float = 0.0,
    train_rate: float = 0.05,
    log=None,
) -> dict:
    from ..datasets.real import make_digits

    log = log or (lambda event: None)
    workdir = Path(workdir)
    clean = workdir / "digits"
    if not (clean / "train.csv").is_file():
        make_digits(clean)
    result: dict = {"data": "digits train.csv", "settings": {}}
    for rate in [0.0, *rates]:
        case = inject(clean / "train.csv", workdir / f"noise-{rate:g}", rate, duplicates if rate else 0, seed)
        dataset = read_csv(case["csv"])
        audit = run_audit(dataset, log)
        entry = {
            "rows": audit.rows,
            "seconds": audit.seconds,
            "phases": audit.phases,
            "label": score_labels(audit.findings, case["wrong_rows"], audit.rows),
            "duplicate": score_duplicates(audit.findings, case["pairs"]),
        }
        result["settings"][f"{rate:g}"] = entry
        log({"stage": "bench", "message": f"labels wrong {rate:.0%}: {entry}"})
        if train_minutes and rate == train_rate:
            result["training"] = _train_both(case["csv"], clean / "test.csv", audit.findings, train_minutes, workdir)
    return result


def _train_both(noisy_csv: Path, test_csv: Path, findings: list[Finding], minutes: float, workdir: Path) -> dict:
    """Test accuracy of the default recipe trained ``minutes`` on the noisy CSV, and on it
    without the rows flagged ``label``."""
    from ..model.checkpoint import load_checkpoint
    from ..training.finetune import FinetuneRequest, finetune
    from ..training.scoring import evaluate_model

    flagged = {f.row for f in findings if f.issue == "label"}
    rows = _read(noisy_csv)
    cleaned = noisy_csv.with_name("train-audited.csv")
    with open(cleaned, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(r for i, r in enumerate(rows) if i + 2 not in flagged)
    test = read_csv(test_csv)
    out = {}
    for name, path in (("noisy", noisy_csv), ("audited", cleaned)):
        dataset = read_csv(path)
        request = FinetuneRequest(
            dataset=dataset, out=workdir / f"model-{name}", time_limit_s=60 * minutes, overwrite=True,
            overrides={"stage2_blocks": 0},
        )  # fmt: skip
        trained = finetune(request)
        report = evaluate_model(load_checkpoint(trained.checkpoint), test.examples)
        out[name] = {
            "train_rows": len(dataset.examples),
            "test_accuracy": round(report["accuracy"], 4),
            "epochs": trained.record.get("best_epoch"),
            "stopped_by": trained.stopped_by,
        }
    return out
