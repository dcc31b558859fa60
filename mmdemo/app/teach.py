"""Teaching a checkpoint a new label in the app, from a few uploaded pictures and the text that
goes with them (or a small CSV + zip): the uploads checked under the limits, the starting
checkpoint never changed, the new one saved for the visitor like a fine-tuned one
(training/add_classes.py does the teaching).

Rows of the labels the model has are replayed where they can be had: the training CSV the
starting checkpoint's record names, when it is still on this machine, or freshly drawn
Sort-of-CLEVR scenes for a checkpoint that answers Sort-of-CLEVR's questions (the shipped one).
Without them only the new label's head row is fitted, and the record says so.
"""

from __future__ import annotations

import csv
import shutil
import threading
from pathlib import Path

from PIL import Image

from ..datasets.csv_table import Dataset, read_csv
from ..datasets.sortofclevr import LABELS as SORT_OF_CLEVR_LABELS
from ..datasets.sortofclevr import generate
from ..imaging import decode_image
from ..model.checkpoint import read_config
from ..model.preprocess import broken_character, is_blank
from ..training.add_classes import FEW_EXAMPLES, AddClassesRequest, add_classes, replay_csv
from .uploads import UploadFolder

MAX_PICTURES = FEW_EXAMPLES  # pictures in one teaching
MAX_LABEL_CHARS = 60
REPLAY_SCENES = 200  # Sort-of-CLEVR scenes drawn for replay (one question of each kind each)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

_one_at_a_time = threading.Lock()  # teaching takes the CPU for tens of seconds: one at a time


class Taught(dict):
    """What the panel shows: ``checkpoint`` (name), ``label``, ``examples`` per new label,
    ``method``, ``seconds``, ``warnings``, ``answer`` (the new checkpoint's answer on the first
    uploaded example: label, confidence, in_scope, scope_messages) and ``picture`` (that example)."""


def teach(
    app,
    owner: str,
    base: str,
    name: str,
    overwrite: bool,
    pictures: list[str] | None,
    text: str | None,
    label: str | None,
    csv_file: str | None = None,
    zip_file: str | None = None,
    columns: tuple[str, ...] = ("image", "text", "label"),
    progress=lambda event: None,
) -> Taught:
    """Teach ``base`` (a checkpoint ``owner`` sees) the label(s) of the uploaded examples and
    save the result as ``owner``'s checkpoint ``name``; ValueError, in the visitor's words, for
    anything that cannot be taught."""
    pictures = [p for p in (pictures or []) if p]
    if not pictures and not csv_file:
        raise ValueError("Upload a few pictures of the new label (5 or more help), or a CSV + zip of examples.")
    if pictures and csv_file:
        raise ValueError("Upload either pictures (with the text and label typed here) or a CSV + zip, not both.")
    target = app.registry.target(name, owner, overwrite)  # name, quota and disk checked first
    base_path = app.registry.path(base, owner)
    if not _one_at_a_time.acquire(blocking=False):
        raise ValueError("Another visitor is teaching a model right now; try again in a minute.")
    try:
        if csv_file:
            dataset, _, upload = app.prepare_upload(csv_file, zip_file, columns)
        else:
            upload = UploadFolder()
            dataset = _pictures_dataset(app, upload.path, pictures, text, label)
        with upload:
            progress({"stage": "replay", "message": "reading examples of the labels the model has"})
            replay = replay_rows(base_path, upload.path / "replay")
            result = add_classes(
                AddClassesRequest(
                    init=base_path,
                    dataset=dataset,
                    out=target,
                    replay=replay,
                    overwrite=overwrite,
                    description=f"{base} taught new labels from a few examples in the mmdemo app.",
                ),
                progress,
            )
            first = dataset.examples[0]
            picture = Image.open(first.image).convert("RGB")
            picture.load()
            answer = app.registry.predictor(name, owner).predict(decode_image(first.image), first.text)
    finally:
        _one_at_a_time.release()
    record = result.record
    return Taught(
        checkpoint=name,
        examples=record["added_classes"],
        added_to_known=record["added_to_known_classes"],
        method=record["method"],
        seconds=record["seconds"],
        warnings=result.warnings,
        text=first.text,
        expected=first.label,
        answer={
            "label": answer.label,
            "confidence": answer.confidence,
            "in_scope": answer.in_scope,
            "messages": answer.scope.get("messages", []),
        },
        picture=picture,
        held_out_new_accuracy=record["metrics"].get("held_out_new_accuracy"),
    )


def _pictures_dataset(app, folder: Path, pictures: list[str], text: str | None, label: str | None) -> Dataset:
    """The uploaded pictures with the typed text and label, as a data set in ``folder``."""
    text, label = (text or "").strip(), (label or "").strip()
    if not text:
        raise ValueError("Type the text that goes with the pictures (for example the question they answer).")
    if not label:
        raise ValueError("Type the new label: the answer the model should give for these pictures.")
    if len(label) > MAX_LABEL_CHARS:
        raise ValueError(f"The label has {len(label):,} characters; the most is {MAX_LABEL_CHARS}.")
    if broken_character(label) is not None or is_blank(label):
        raise ValueError("The label has characters that cannot be shown; type it again.")
    app.check_text(text)
    if len(pictures) > MAX_PICTURES:
        raise ValueError(f"{len(pictures)} pictures uploaded; the most is {MAX_PICTURES} (teaching is for a few).")
    (folder / "images").mkdir()
    rows = []
    for i, picture in enumerate(pictures):
        source = Path(picture)
        shown = source.name
        if source.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{shown} is not a picture (expected one of {', '.join(IMAGE_SUFFIXES)})")
        try:
            decode_image(source, shown, app.limits.max_image_pixels)  # checked before it is kept
        except ValueError as e:
            raise ValueError(f"picture {i + 1}: {e}") from None
        kept = f"images/{i:02d}{source.suffix.lower()}"
        shutil.copyfile(source, folder / kept)
        rows.append({"image": kept, "text": text, "label": label})
    with open(folder / "data.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return read_csv(folder / "data.csv", image_root=folder, confine=True, max_pixels=app.limits.max_image_pixels)


def replay_rows(checkpoint: Path, folder: Path) -> Dataset | None:
    """Rows of the labels ``checkpoint`` answers: its training CSV when its record names one that
    is still here, Sort-of-CLEVR scenes drawn into ``folder`` for a Sort-of-CLEVR model, else None."""
    path = replay_csv(checkpoint)
    if path is not None:
        try:
            return read_csv(path)
        except ValueError:
            pass  # moved or changed since: as if it were not there
    labels = read_config(checkpoint).labels
    if labels and set(labels) <= set(SORT_OF_CLEVR_LABELS):
        return read_csv(generate(folder, REPLAY_SCENES, seed=0, per_kind=1))
    return None
