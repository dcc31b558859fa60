"""A fine-tune that starts from a checkpoint scores that checkpoint on its own validation rows:
the record (and the model card) holds both models' accuracy and ECE on the same rows, rows whose
label the starting checkpoint lacks count as wrong for it, and ``worse`` says which is better."""

import csv
import json
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from mmdemo.datasets.csv_table import read_csv
from mmdemo.inference.predictor import Predictor
from mmdemo.model.checkpoint import save_checkpoint
from mmdemo.model.classifier import build_model
from mmdemo.training.finetune import FinetuneRequest, finetune
from mmdemo.training.settings import TrainSettings

from ..conftest import tiny_config


def _write(folder, name: str, images: range) -> str:
    """Rows of coloured squares: 'what colour is it?' (red / blue) and 'is it warm or cold?'."""
    rng = np.random.default_rng(images.start)
    (folder / "img").mkdir(exist_ok=True)
    rows = []
    for i in images:
        a = np.full((32, 32, 3), 255, np.uint8)
        y, x = rng.integers(4, 24, size=2)
        a[y : y + 8, x : x + 8] = (255, 0, 0) if i % 2 else (0, 0, 255)
        Image.fromarray(a).save(folder / "img" / f"{i}.png")
        rows.append([f"img/{i}.png", "what colour is it?", "red" if i % 2 else "blue"])
        rows.append([f"img/{i}.png", "is it warm or cold?", "warm" if i % 2 else "cold"])
    path = folder / name
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["image", "text", "label"], *rows])
    return str(path)


def test_the_starting_checkpoint_is_scored_on_the_same_validation_rows(tmp_path):
    torch.manual_seed(0)
    start = save_checkpoint(build_model(tiny_config(labels=["blue", "red"])), tmp_path / "start")
    train = read_csv(_write(tmp_path, "train.csv", range(8)))
    val = read_csv(_write(tmp_path, "val.csv", range(8, 14)))  # 12 rows, 6 of them warm / cold
    settings = TrainSettings(epochs=1, batch_size=8, lr=3e-3, encoder_lr=3e-3, freeze=[], seed=0)
    result = finetune(FinetuneRequest(train, tmp_path / "new", settings, val_dataset=val, init=start))

    c = result.record["start_comparison"]
    assert (c["checkpoint"], c["rows"], c["unknown_label_rows"]) == ("start", 12, 6)
    # the starting checkpoint's accuracy as its own predictor serves it, on the validation rows
    predictor = Predictor.from_checkpoint(start, backend="torch")
    probs = predictor.probabilities(
        [Image.open(e.image).convert("RGB") for e in val.examples], [e.text for e in val.examples]
    )
    expected = np.mean([predictor.labels[j] == e.label for j, e in zip(probs.argmax(1), val.examples)])
    assert c["accuracy"] == round(float(expected), 4) <= 0.5  # the warm / cold rows are wrong for it
    assert c["new_accuracy"] == round(result.record["metrics"]["val_accuracy"], 4)
    assert c["worse"] == (c["new_accuracy"] < c["accuracy"]) and 0 <= c["ece"] <= 1
    saved = json.loads((tmp_path / "new" / "config.json").read_text())["training"]["start_comparison"]
    assert saved == c
    assert c["summary"] in (tmp_path / "new" / "README.md").read_text()
    assert "6 of them have labels 'start' does not know" in c["summary"]


def test_a_new_model_records_no_comparison(tmp_path):
    train = read_csv(_write(tmp_path, "train.csv", range(8)))
    settings = TrainSettings(epochs=1, batch_size=8, freeze=[], seed=0)
    result = finetune(FinetuneRequest(train, tmp_path / "new", settings, config=tiny_config()))
    assert "start_comparison" not in result.record


def test_train_prints_the_comparison_with_the_starting_checkpoint(tmp_path):
    torch.manual_seed(0)
    start = save_checkpoint(build_model(tiny_config(labels=["blue", "red"])), tmp_path / "start")
    train_csv = _write(tmp_path, "train.csv", range(8))
    val_csv = _write(tmp_path, "val.csv", range(8, 12))
    args = ["train", "--csv", train_csv, "--val-csv", val_csv, "--init", str(start), "--out", str(tmp_path / "new")]
    run = subprocess.run([sys.executable, "-m", "mmdemo", *args, "--epochs", "1"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    comparison = json.loads(run.stdout.strip().splitlines()[-1])["start_comparison"]
    assert comparison["checkpoint"] == "start" and comparison["rows"] == 8
    assert comparison["summary"] in run.stderr


def test_the_comparison_says_which_model_is_better():
    from mmdemo.training.finetune import comparison_words

    c = dict(checkpoint="base", rows=120, accuracy=0.99, ece=0.02, new_accuracy=0.63, new_ece=0.2, unknown_label_rows=0)
    assert comparison_words({**c, "worse": True}).startswith(
        "The new model is worse than the one it started from: validation accuracy 0.63 against 0.99 for 'base'"
        " on the same 120 validation rows. Keep using 'base', or"
    )
    better = comparison_words({**c, "new_accuracy": 0.995, "worse": False})  # a difference two decimals hide
    assert better.startswith("The new model is at least as good as the one it started from: validation accuracy 0.995")
    assert "against 0.990 for 'base'" in better
