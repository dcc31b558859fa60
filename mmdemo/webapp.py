"""What the web UI needs from the service layer, in one object: the checkpoint registry, the
fine-tune jobs, a work folder, the example gallery and the example dataset.

Imports no gradio: the UI (mmdemo/ui/) wires components to this object's methods.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from pathlib import Path

from .jobs import JobManager
from .registry import CheckpointRegistry
from .sortofclevr import generate

DEFAULT_CHECKPOINT = "sort-of-clevr"
EXAMPLE_DATASET_IMAGES = 150


class App:
    """What the UI needs from the service layer, in one object."""

    def __init__(self, registry: CheckpointRegistry | None = None, work_dir: str | None = None):
        self.registry = registry or CheckpointRegistry()
        self.jobs = JobManager(self.registry)
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="mmdemo-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)

    def default_checkpoint(self) -> str | None:
        names = self.registry.names()
        return DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT in names else (names[0] if names else None)

    def examples(self) -> list[list[str]]:
        """(image, question) pairs shipped with the default checkpoint, for the gallery."""
        name = self.default_checkpoint()
        if not name:
            return []
        listing = self.registry.path(name) / "examples" / "examples.csv"
        if not listing.is_file():
            return []
        rows = list(csv.DictReader(open(listing, newline="")))
        return [[str(listing.parent / r["image"]), r["text"]] for r in rows]

    def capabilities(self, name: str) -> tuple[list[str], dict, dict]:
        """What a checkpoint can answer: (labels, task, benchmark); see ``read_task``."""
        return read_task(self.registry.path(name))

    def suggest_base(self, labels: list[str]) -> str | None:
        """The shipped checkpoint to fine-tune from for a dataset with these labels, or None
        (a new model) when no shipped checkpoint knows at least half of them."""
        shipped = {
            name: read_task(path)[0]
            for name, path in self.registry.paths().items()
            if path.parent.resolve() == self.registry.shipped_dir.resolve()
        }
        return label_overlap(labels, shipped)

    def example_dataset(self) -> tuple[str, str]:
        """A small generated Sort-of-CLEVR set: the CSV (image,text,label) and a zip of its images."""
        folder = Path(tempfile.mkdtemp(prefix="example-", dir=self.work_dir))
        csv_path = generate(folder / "sort-of-clevr", EXAMPLE_DATASET_IMAGES, seed=7)
        archive = shutil.make_archive(str(folder / "images"), "zip", root_dir=csv_path.parent, base_dir="images")
        rows = list(csv.DictReader(open(csv_path, newline="")))
        slim = folder / "sort-of-clevr.csv"
        with open(slim, "w", newline="") as f:  # the standard three columns
            writer = csv.DictWriter(f, fieldnames=["image", "text", "label"])
            writer.writeheader()
            writer.writerows({k: r[k] for k in ("image", "text", "label")} for r in rows)
        return str(slim), archive


def read_task(path: Path) -> tuple[list[str], dict, dict]:
    """(labels, task, benchmark) from a checkpoint's config.json: ``task`` says what it can be
    asked (kinds of question, slot values; {} when the checkpoint does not say), ``benchmark``
    is its stored ``bench-sort-of-clevr`` figures ({} when none)."""
    data = json.loads((path / "config.json").read_text())
    return list(data["model"]["labels"]), data.get("task") or {}, data.get("training", {}).get("benchmark") or {}


def label_overlap(labels: list[str], candidates: dict[str, list[str]]) -> str | None:
    """The candidate whose labels cover most of ``labels`` (at least half of them), or None:
    a dataset whose answers a shipped model already knows should start from that model."""
    wanted = set(labels)
    if not wanted:
        return None
    best, best_share = None, 0.0
    for name, known in candidates.items():
        share = len(wanted & set(known)) / len(wanted)
        if share > best_share:
            best, best_share = name, share
    return best if best_share >= 0.5 else None
