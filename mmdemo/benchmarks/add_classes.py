"""Teaching new classes measured where the truth is known: scikit-learn's digit scans
(``make-real-benchmark --kind digits``). A model is trained with the default recipe on the
scans of every digit but ``missing``; ``add_classes`` then teaches it the missing digits from k
examples each ("What digit is this?" rows of training scans), and each result is scored on the
test scans: the new digits' accuracy, the old rows' accuracy before and after, ECE, the share
of new-digit rows flagged out of scope, and the seconds taken; next to a full fine-tune of the
starting model on its training rows plus the same k examples.

``python -m mmdemo bench-add-classes`` prints it; figures in docs/add-classes.md.
"""

from __future__ import annotations

import csv
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

from ..datasets.csv_table import read_csv
from ..datasets.real import make_digits
from ..imaging import decode_image
from ..metrics import expected_calibration_error

DIGIT_QUESTION = "What digit is this?"


def write_split(digits: dict, out: Path, missing: list[str], shots: list[int], seed: int) -> dict:
    """The benchmark's CSVs in ``out`` (next to the digit images): ``base.csv`` (training rows of
    the other digits' scans, every question), ``shots_<k>.csv`` (k "What digit is this?" rows of
    training scans per missing digit, the smaller sets inside the larger), ``test_new.csv`` and
    ``test_old.csv`` (the test scans' digit rows of the missing digits; every row of the others)."""
    train, test = _read(Path(digits["train"])), _read(Path(digits["test"]))
    digit_of = {r["source"]: r["label"] for r in train + test if r["qtype"] == "digit"}
    rng = random.Random(seed)
    paths = {"base": _write(out / "base.csv", [r for r in train if digit_of[r["source"]] not in missing])}
    pools = {
        d: rng.sample(sorted(r["source"] for r in train if r["qtype"] == "digit" and r["label"] == d), max(shots))
        for d in missing
    }
    by_source = {r["source"]: r for r in train if r["qtype"] == "digit"}
    for k in shots:
        paths[f"shots_{k}"] = _write(out / f"shots_{k}.csv", [by_source[s] for d in missing for s in pools[d][:k]])
    paths["test_new"] = _write(
        out / "test_new.csv", [r for r in test if r["qtype"] == "digit" and digit_of[r["source"]] in missing]
    )
    paths["test_old"] = _write(out / "test_old.csv", [r for r in test if digit_of[r["source"]] not in missing])
    return paths


def score(checkpoint: Path, csv_path: Path) -> dict:
    """Accuracy, ECE and the share of rows flagged out of scope of ``checkpoint`` on a CSV."""
    from ..inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, "cpu", "torch")
    examples = read_csv(csv_path).examples
    right, confidence, flagged = [], [], 0
    for lo in range(0, len(examples), 64):
        batch = examples[lo : lo + 64]
        predictions = predictor.predict_batch([decode_image(e.image) for e in batch], [e.text for e in batch])
        for e, p in zip(batch, predictions, strict=True):
            right.append(p.label == e.label)
            confidence.append(p.confidence)
            flagged += not p.in_scope
    return {
        "rows": len(right),
        "accuracy": round(sum(right) / len(right), 4),
        "ece": round(expected_calibration_error(confidence, right), 4),
        "out_of_scope": round(flagged / len(right), 4),
    }


def add_classes_benchmark(
    workdir: Path,
    missing: list[str],
    shots: list[int],
    train_minutes: float,
    finetune_minutes: float,
    seed: int = 0,
    log: Callable[[dict], None] = lambda event: None,
) -> dict:
    """The whole benchmark; the starting model is trained once per ``workdir`` and reused (its
    settings are in ``workdir/base.json``)."""
    from ..training.add_classes import AddClassesRequest, add_classes
    from ..training.finetune import FinetuneRequest, finetune

    workdir.mkdir(parents=True, exist_ok=True)
    digits = make_digits(workdir / "digits", seed=seed)
    paths = write_split(digits, workdir / "digits", missing, shots, seed)
    base = workdir / "base"
    wanted = {"missing": missing, "train_minutes": train_minutes, "seed": seed}
    marker = workdir / "base.json"
    if not (marker.is_file() and json.loads(marker.read_text()) == wanted and (base / "config.json").is_file()):
        log({"stage": "base", "message": f"training the starting model without digits {', '.join(missing)}"})
        started = time.monotonic()
        finetune(
            FinetuneRequest(dataset=read_csv(paths["base"]), out=base, time_limit_s=60 * train_minutes, overwrite=True)
        )
        marker.write_text(json.dumps(wanted))
        log({"stage": "base", "message": f"trained in {time.monotonic() - started:.0f} s"})
    result = {
        "missing": missing,
        "test_new_rows": None,
        "start": {"old": score(base, paths["test_old"])},
        "add_classes": {},
        "finetune": {},
    }
    replay = read_csv(paths["base"])
    for k in shots:
        log({"stage": "add-classes", "message": f"teaching {', '.join(missing)} from {k} example(s) each"})
        out = workdir / f"taught_{k}"
        started = time.monotonic()
        taught = add_classes(
            AddClassesRequest(init=base, dataset=read_csv(paths[f"shots_{k}"]), out=out, replay=replay,
                              overwrite=True, seed=seed)
        )  # fmt: skip
        seconds = round(time.monotonic() - started, 1)
        new, old = score(out, paths["test_new"]), score(out, paths["test_old"])
        result["test_new_rows"] = new["rows"]
        result["add_classes"][k] = {"seconds": seconds, "new": new, "old": old, "method": taught.record["method"]}
        if finetune_minutes > 0:
            log({"stage": "finetune", "message": f"full fine-tune on the training rows plus {k} example(s) each"})
            both = workdir / "digits" / f"base_plus_{k}.csv"
            _write(both, _read(paths["base"]) + _read(paths[f"shots_{k}"]))
            started = time.monotonic()
            finetune(
                FinetuneRequest(dataset=read_csv(both), out=workdir / f"finetuned_{k}", init=base,
                                time_limit_s=60 * finetune_minutes, overwrite=True)
            )  # fmt: skip
            result["finetune"][k] = {
                "seconds": round(time.monotonic() - started, 1),
                "new": score(workdir / f"finetuned_{k}", paths["test_new"]),
                "old": score(workdir / f"finetuned_{k}", paths["test_old"]),
            }
    return result


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "text", "label", "qtype", "source"])
        writer.writeheader()
        writer.writerows(rows)
    return path
