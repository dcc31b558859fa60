"""Does the image–text contrastive loss help? An A/B on real-data benchmarks.

For each benchmark (``make-real-benchmark --kind ...``, written once under ``workdir``) and
each weight W (0 is the arm without the loss), the same command line a user runs:
``train --contrastive W --epochs N --seed S`` (a fixed number of epochs and a time limit that
never binds, so every arm does the same work however busy the machine is), then ``evaluate``
on the held-out test rows. Both are subprocesses, so each arm starts from a fresh process.

    python -m mmdemo bench-contrastive                            # digits and photo-crops, W = 0, 0.1, 0.5
    python -m mmdemo bench-contrastive --kinds digits --epochs 4 --weights 0 0.5
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

KINDS = ("digits", "photo-patches", "photo-crops")
NEVER_BINDING_MINUTES = 1000  # the time limit of every arm: the epochs decide


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _run(command: list[str], what: str) -> dict:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return _last_json(done.stdout)


def _load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def make_data(kind: str, folder: Path, seed: int) -> dict:
    """The benchmark's train.csv and test.csv in ``folder`` (written once, reused after)."""
    if (folder / "train.csv").exists() and (folder / "test.csv").exists():
        return {"train": str(folder / "train.csv"), "test": str(folder / "test.csv")}
    from ..datasets import real

    make = {"digits": real.make_digits, "photo-patches": real.make_photo_patches, "photo-crops": real.make_photo_crops}
    return make[kind](folder, seed=seed)


def arm(data: dict, out: Path, weight: float, epochs: int, seed: int) -> dict:
    """Train one arm and evaluate it on the test rows: accuracy, ECE, train time, load."""
    python = [sys.executable, "-m", "mmdemo"]
    load_before, start = _load(), time.perf_counter()
    trained = _run(
        python + ["train", "--csv", data["train"], "--out", str(out), "--overwrite", "--epochs", str(epochs),
                  "--time-limit", str(NEVER_BINDING_MINUTES), "--seed", str(seed), "--contrastive", str(weight)],
        f"train --contrastive {weight}",
    )  # fmt: skip
    wall = time.perf_counter() - start
    test = _run(python + ["evaluate", "--checkpoint", str(out), "--csv", data["test"]], "evaluate")
    return {
        "contrastive": weight,
        "test_accuracy": round(test["accuracy"], 4),
        "test_ece": round(test["ece"], 4),
        "val_accuracy": trained.get("val_accuracy"),
        "best_epoch": trained["best_epoch"],
        "train_seconds": round(trained["seconds"], 1),
        "train_wall_seconds": round(wall, 1),
        "samples_per_s": trained["throughput"].get("later_epochs_samples_per_s"),
        "load_before": load_before,
        "load_after": _load(),
    }


def contrastive_ab(
    kinds: list[str], weights: list[float], epochs: int, seed: int, workdir: Path, progress=print, data_seed: int = 0
) -> dict:
    """Every (benchmark, weight) arm, trained with ``seed`` on the data ``data_seed`` writes;
    ``progress`` gets one line per arm."""
    results = []
    for kind in kinds:
        folder = workdir / f"{kind}-data{data_seed}"
        data = make_data(kind, folder, data_seed)
        for weight in weights:
            figures = arm(data, folder / f"contrastive-{weight:g}-seed{seed}", weight, epochs, seed)
            results.append({"benchmark": kind, "seed": seed, **figures})
            progress(table([results[-1]], header=False))
    return {"epochs": epochs, "seed": seed, "data_seed": data_seed, "arms": results}


def step_overhead(sizes: tuple[int, ...] = (64, 128), steps: int = 10, threads: int = 1, rounds: int = 3) -> list[dict]:
    """What the loss adds to a training step on cached features (``bench-train``'s step, with
    and without it, ``threads`` torch threads): the region layers run once more per image.
    The two alternate for ``rounds`` rounds and each keeps its fastest median, so a burst of
    load on a shared machine weighs on neither alone."""
    from .training_speed import step_samples_per_s

    figures = []
    for size in sizes:
        times: dict[float, list[float]] = {0.0: [], 0.5: []}
        for _ in range(rounds):
            for weight in times:
                times[weight].append(
                    step_samples_per_s(size, steps=steps, threads=threads, contrastive=weight)["step_ms"]
                )
        figures.append(
            {"image_size": size, "threads": threads, "step_ms": min(times[0.0]), "step_ms_with_loss": min(times[0.5]),
             "load": _load()}
        )  # fmt: skip
    return figures


def table(arms: list[dict], header: bool = True) -> str:
    """The arms as a Markdown table (the one docs/training.md shows)."""
    lines = []
    if header:
        lines += [
            "| benchmark | --contrastive | seed | test accuracy | test ECE | best epoch | train s | samples/s | load |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
    for a in arms:
        lines.append(
            f"| {a['benchmark']} | {a['contrastive']:g} | {a['seed']} | {100 * a['test_accuracy']:.1f} % | {a['test_ece']:.3f} |"
            f" {a['best_epoch']} | {a['train_seconds']:.0f} | {a['samples_per_s']} |"
            f" {a['load_before']}-{a['load_after']} |"
        )
    return "\n".join(lines)
