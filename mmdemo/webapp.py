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

from .card import app_model_card
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

    def model_card(self, name: str | None) -> str:
        """The checkpoint's model card as Markdown (from its config.json; no model is loaded)."""
        if not name:
            return "No checkpoint selected."
        try:
            path = self.registry.path(name)
        except ValueError as e:
            return str(e)
        return app_model_card(name, json.loads((path / "config.json").read_text()))

    def deletion_curves(self, checkpoint: str, image_path: str, text: str, heatmap: list, label: str) -> dict:
        """Faithfulness of one prediction's heatmap: deletion (hottest first, random order) and
        insertion curves of the answer's probability (faithfulness.curves)."""
        import torch

        from .faithfulness import curves
        from .imaging import decode_image

        predictor = self.registry.predictor(checkpoint)
        image = decode_image(image_path, name="the image")
        return curves(predictor.probabilities, image, text, torch.tensor(heatmap), predictor.labels.index(label))

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
