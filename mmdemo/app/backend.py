"""What the web UI needs from the service layer, in one object: the checkpoint registry, the
fine-tune jobs, the visitor's identity, upload handling under the limits, the example gallery,
the example dataset, and ``answer``, the use case behind /predict (plain data the UI draws).

Imports no gradio: the UI (mmdemo/ui/) wires components to this object's methods. Every
method that reads or writes a visitor's things takes the ``owner`` the UI resolved on the
server (``App.owner``), never a name sent by the client.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import secrets
import shutil
import time
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from ..datasets.archives import extract_zip
from ..datasets.csv_table import Dataset, check_trainable, missing_images_hint, read_csv
from ..datasets.sortofclevr import generate
from ..datasets.splits import make_split
from ..explain.methods import DEFAULT_METHOD, METHODS
from ..explain.relations import relation_objects
from ..imaging import decode_image
from ..inference.predictor import Prediction
from ..model.card import app_model_card
from ..model.checkpoint import read_config
from ..model.preprocess import broken_character, is_blank
from ..training.settings import TrainSettings
from .jobs import DataSource, JobManager
from .registry import SHARED, CheckpointRegistry, hf_owner, owner_id
from .settings import Limits, shared_mode
from .similar import SimilarExample, SimilarExamples
from .uploads import UploadFolder, make_upload_dir, sweep_uploads

log = logging.getLogger("mmdemo.app")

DEFAULT_CHECKPOINT = "sort-of-clevr"
EXAMPLE_DATASET_IMAGES = 150
COMPRESSED_MAGIC = {"gzip": b"\x1f\x8b", "zip": b"PK\x03\x04", "bzip2": b"BZh", "xz": b"\xfd7zX"}


class Answer(NamedTuple):
    """One /predict answer as plain data: what the Predict tab's views are drawn from."""

    prediction: Prediction  # the answer, its explanation and its out-of-scope assessment
    contributions: dict[str, dict[str, float]]  # "both" / "image only" / "text only" -> label -> probability
    image: Image.Image  # the decoded input, what the pictures are drawn on
    explanation: dict  # what the API returns as "Explanation": prediction.to_json(), scores rounded
    state: dict  # what a word click, an opacity change or the deletion curve reads later (JSON types)
    elapsed_ms: float  # the analysis (one encoder pass), decoding excluded
    device: str  # where the model ran
    max_tokens: int  # the text encoder's token limit (a longer text was truncated)


class App:
    """What the UI needs from the service layer, in one object."""

    def __init__(
        self,
        registry: CheckpointRegistry | None = None,
        work_dir: str | None = None,
        jobs_dir: str | None = None,
        limits: Limits | None = None,
        shared: bool | None = None,
    ):
        self.limits = limits or (registry.limits if registry else Limits.from_env())
        self.registry = registry or CheckpointRegistry(limits=self.limits)
        self.shared = shared_mode() if shared is None else shared
        # the start-up routine: once, in the serving process (fine-tune workers are programs of
        # their own, mmdemo/app/worker.py, and never build an App)
        removed = self.registry.clean()
        self.jobs = JobManager(self.registry, jobs_dir, self.limits)
        # upload folders of processes that have ended (a live server's in this TMPDIR stay), but
        # never the data of a queued, running or resumable job
        swept = sweep_uploads(keep=self.jobs.kept_data(), older_than_s=60)
        if removed or swept:
            log.info(
                "start-up: removed %d half-written/expired checkpoint(s), %d upload folder(s)", len(removed), len(swept)
            )
        self._own_work_dir = not work_dir  # made here: removed by close()
        self.work_dir = Path(work_dir or make_upload_dir("work"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._example_dataset: tuple[str, str] | None = None
        self.similar = SimilarExamples(self.registry, self.limits.max_image_pixels)

    # --- who is asking -------------------------------------------------------------------
    @staticmethod
    def new_token() -> str:
        """A secret owner token (256 bits): whoever holds it controls that visitor's things."""
        return secrets.token_urlsafe(32)

    def owner(self, token: str | None, hf_username: str | None = None) -> str:
        """The owner a request acts for, decided on the server: everyone in shared mode, else the
        signed-in Hugging Face user, else the holder of the secret token."""
        if self.shared:
            return SHARED
        if hf_username:
            return hf_owner(hf_username)
        if not token:
            raise ValueError("no owner token: reload the page, or pass the owner_token /start_finetune returned")
        return owner_id(token)

    def visitor(self, token: str | None, hf_username: str | None = None) -> str:
        """Whose evaluation, stop button and ratings a request acts on: its owner, except in
        shared mode, where visitors share checkpoints but each browser's token keeps its own
        evaluation (and ratings) apart. Like ``owner``, never a session hash."""
        if self.shared and token:
            return owner_id(token)
        return self.owner(token, hf_username)

    def checkpoint_names(self, owner: str | None) -> list[str]:
        return self.registry.names(owner)

    # --- examples ------------------------------------------------------------------------
    def default_checkpoint(self) -> str | None:
        names = self.registry.names()
        return DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT in names else (names[0] if names else None)

    def model_card(self, name: str | None, owner: str | None = None) -> str:
        """The checkpoint's model card as Markdown (from its config.json; no model is loaded)."""
        if not name:
            return "No checkpoint selected."
        try:
            path = self.registry.path(name, owner)
        except ValueError as e:
            return str(e)
        return app_model_card(name, json.loads((path / "config.json").read_text()))

    def deletion_curves(
        self, checkpoint: str, image_path: str, text: str, heatmap: list, label: str, owner: str | None = None
    ) -> dict:
        """Faithfulness of one prediction's heatmap: deletion (hottest first, random order) and
        insertion curves of the answer's probability (faithfulness.curves)."""
        import torch

        from ..explain.faithfulness import curves

        predictor = self.registry.predictor(checkpoint, owner)
        image = decode_image(image_path, name="the image", max_pixels=self.limits.max_image_pixels)
        return curves(predictor.probabilities, image, text, torch.tensor(heatmap), predictor.labels.index(label))

    def answer(
        self,
        image: str | None,
        question: str | None,
        checkpoint: str | None = None,
        method: str | None = DEFAULT_METHOD,
        owner: str | None = None,
        task: str | None = None,
    ) -> Answer:
        """/predict's use case: the inputs checked (the question first, so a huge text is refused
        at once), the image decoded within the pixel limit, the answer, explanation and modality
        contributions from one encoder pass, the objects of a closest/furthest question found in the
        picture (raw attention), and the state later views are drawn from. ``owner`` (decided on
        the server) may use their own checkpoints besides the shipped ones. A ValueError says what
        is wrong with the input, in the visitor's words."""
        question = self.check_text(question)
        if not image:
            raise ValueError("Please upload an image (or pick an example).")
        checkpoint = checkpoint or self.default_checkpoint()
        method = method or DEFAULT_METHOD
        if method not in METHODS:
            raise ValueError(f"unknown explanation method {str(method)[:40]!r}; use one of {', '.join(METHODS)}")
        predictor = self.registry.predictor(str(checkpoint), owner)
        decoded = decode_image(image, name="the image", max_pixels=self.limits.max_image_pixels)
        start = time.perf_counter()
        if task is not None and task not in predictor.task_names:  # a selector left from another checkpoint
            task = None
        prediction, contributions = predictor.analyse(decoded, question, method, task)  # one encoder pass
        elapsed_ms = (time.perf_counter() - start) * 1000
        e = prediction.explanation
        explanation = prediction.to_json()
        explanation["scores"] = {k: round(v, 4) for k, v in explanation["scores"].items()}
        relation = relation_objects(decoded, question, e.peak_xy) if method == "raw" else None
        state = {
            "image": image,
            "checkpoint": checkpoint,
            "owner": owner,  # decided on the server; the state never leaves it
            "label": prediction.label,
            "task": prediction.explained_task,
            "method": method,
            "question": question,
            "words": e.words,
            "word_scores": e.word_scores,
            "heatmap": explanation["heatmap"],
            "peak_xy": explanation["peak_xy"],
            "word_maps": e.word_maps.tolist(),
            "grid": list(e.heatmap.shape),
            "relation": None
            if relation is None
            else {"kind": relation.kind, "reference": relation.reference, "answer": relation.answer},
            "selected": None,
        }
        return Answer(
            prediction,
            contributions,
            decoded,
            explanation,
            state,
            elapsed_ms,
            str(predictor.device),
            predictor.config.max_tokens,
        )

    def similar_examples(
        self, checkpoint: str, image: str, question: str, owner: str | None = None
    ) -> list[SimilarExample]:
        """The training rows of ``checkpoint`` most like an answered image and question, with their
        pictures ([] for a checkpoint without a similar-examples index; app/similar.py)."""
        return self.similar.find(checkpoint, owner, image, question)

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

    def task_names(self, name: str, owner: str | None = None) -> list[str]:
        """The tasks a checkpoint answers (one per label column it was trained on), from its config."""
        return read_config(self.registry.path(name, owner)).task_names()

    def capabilities(self, name: str, owner: str | None = None) -> tuple[list[str], dict, dict]:
        """What a checkpoint can answer: (labels, task, benchmark); see ``read_task``."""
        return read_task(self.registry.path(name, owner))

    def suggest_base(self, labels: list[str]) -> str | None:
        """The shipped checkpoint to fine-tune from for a dataset with these labels, or None
        (a new model) when no shipped checkpoint knows at least half of them."""
        shipped = {name: read_task(path)[0] for name, path in self.registry.shipped().items()}
        return label_overlap(labels, shipped)

    def example_dataset(self) -> tuple[str, str]:
        """A small generated Sort-of-CLEVR set: the CSV (image,text,label) and a zip of its images.
        Generated once per server (the same seed gives the same set)."""
        if self._example_dataset and all(Path(p).is_file() for p in self._example_dataset):
            return self._example_dataset
        folder = self.work_dir / "example-dataset"
        shutil.rmtree(folder, ignore_errors=True)
        csv_path = generate(folder / "sort-of-clevr", EXAMPLE_DATASET_IMAGES, seed=7)
        archive = shutil.make_archive(str(folder / "images"), "zip", root_dir=csv_path.parent, base_dir="images")
        rows = list(csv.DictReader(open(csv_path, newline="")))
        slim = folder / "sort-of-clevr.csv"
        with open(slim, "w", newline="") as f:  # the standard three columns
            writer = csv.DictWriter(f, fieldnames=["image", "text", "label"])
            writer.writeheader()
            writer.writerows({k: r[k] for k in ("image", "text", "label")} for r in rows)
        shutil.rmtree(folder / "sort-of-clevr", ignore_errors=True)
        self._example_dataset = (str(slim), archive)
        return self._example_dataset

    # --- bounded input -------------------------------------------------------------------
    def check_text(self, text: str) -> str:
        """The question as typed, or a ValueError saying what is wrong with it: empty (invisible
        characters such as zero-width spaces do not count), too long, or holding a broken
        character (a lone surrogate a JSON client can send, which no tokenizer takes)."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("Please type a question or a description of the image.")
        if len(text) > self.limits.max_text_chars:
            raise ValueError(f"The question has {len(text):,} characters; the most is {self.limits.max_text_chars:,}.")
        if is_blank(text):
            raise ValueError(
                "Please type a question or a description of the image: the text holds only invisible characters"
                " (zero-width or formatting characters do not count)."
            )
        position = broken_character(text)
        if position is not None:
            raise ValueError(
                f"the question holds a broken character at character {position} (U+{ord(text[position - 1]):04X},"
                " half of a UTF-16 pair, not a character by itself): type or paste the question again"
            )
        return text

    def prepare_upload(
        self, csv_file: str, zip_file: str | None, columns: tuple[str, ...]
    ) -> tuple[Dataset, DataSource, UploadFolder]:
        """Uploads -> a validated Dataset in a fresh upload folder (under the limits). The caller
        removes the folder (or hands it to a job); on error it is already removed. ``columns``: the
        image, text and label columns, and optionally the group column (the rows' sources)."""
        if not csv_file:
            raise ValueError("Upload a CSV file, or press 'Use example dataset'.")
        limits = self.limits
        size = Path(csv_file).stat().st_size
        if size > limits.max_csv_mb * 1e6:
            raise ValueError(f"the CSV is {size / 1e6:,.1f} MB, over the limit of {limits.max_csv_mb:,} MB")
        with open(csv_file, "rb") as f:
            magic = f.read(4)
        packed = next((kind for kind, start in COMPRESSED_MAGIC.items() if magic.startswith(start)), None)
        if packed:  # a renamed data.csv.gz: its bytes would be read as a broken UTF-8 text
            raise ValueError(f"the CSV is compressed ({packed}): upload the .csv itself, uncompressed")
        upload = UploadFolder()
        try:
            if zip_file:
                extract_zip(zip_file, upload.path, limits.max_zip_entries, limits.max_zip_mb * 1_000_000)
            csv_path = upload.path / "data.csv"
            shutil.copyfile(csv_file, csv_path)
            for given, what in (
                (columns[1], "Pick at least one text column."),
                (columns[2], "Tick at least one label column."),
            ):
                if isinstance(given, list | tuple) and not given:
                    raise ValueError(what)
            # several text or label columns come as a list (the form) or comma-separated (the API)
            image_col, text_col, label_col = (
                (list(c) if isinstance(c, list | tuple) else c) or d
                for c, d in zip(columns, ("image", "text", "label"))
            )
            group_col = (columns[3] if len(columns) > 3 else None) or None  # optional: the rows' sources
            dataset = read_csv(
                csv_path,
                image_col,
                text_col,
                label_col,
                image_root=upload.path,
                confine=True,
                max_rows=limits.max_csv_rows,
                max_text_chars=limits.max_text_chars,
                max_pixels=limits.max_image_pixels,
                group_column=group_col,
            )
            source = DataSource(
                upload.path, csv_path, image_col, text_col, label_col, Path(csv_file).name, group_col or ""
            )
            return dataset, source, upload
        except BaseException:
            upload.remove()
            raise

    def preflight(
        self,
        csv_file: str,
        zip_file: str | None,
        columns: tuple[str, ...],
        base: str | None = None,
        overrides: dict | None = None,
        time_limit_s: float | None = None,
        owner: str | None = None,
        val_fraction: float = 0.1,
    ) -> str:
        """Check data: the pre-flight report, the recipe's plan for it (each setting, why, and
        the estimated time on this machine) and how the validation split will be made (with a
        warning when its images look close to training images); ValueError when the data cannot
        train."""
        dataset, _, upload = self.prepare_upload(csv_file, zip_file, columns)
        try:
            hint = missing_images_hint(dataset, bool(zip_file))
            if hint:  # one hint instead of a line per row
                return f"{hint}\n\n{len(dataset.examples)} rows usable, {len(dataset.rejected)} without their image."
            check_trainable(dataset)
            init = self.registry.path(base, owner) if base else None
            # the recipe reads the images' headers (their sizes): before the upload folder goes
            recipe = self.jobs.plan(dataset, overrides, time_limit_s or self.jobs.time_limit_s(None), init)
            split = make_split(dataset, None, val_fraction, TrainSettings().seed).describe()  # reads the images too
        finally:
            upload.remove()
        return (
            f"{dataset.report()}\n\nTraining plan (what Start will use; set values win):\n{recipe.describe()}"
            f"\nsplit ({val_fraction:.0%} for validation): {split}"
        )

    def start_job(
        self,
        owner: str,
        csv_file: str,
        zip_file: str | None,
        columns: tuple[str, ...],
        overrides: dict | None,
        name: str,
        base: str | None,
        overwrite: bool,
        val_fraction: float,
        time_limit_s: float | None = None,
        review: dict | None = None,
    ) -> dict:
        """Queue a fine-tune job: the recipe chooses every setting not in ``overrides``, within
        ``time_limit_s`` (default: the recipe's budget, capped by the server's job time limit);
        ``review``: an audit's decisions to apply (``start_reviewed_job``)."""
        self.registry.target(name, owner, overwrite)  # refuse before the data is read
        dataset, source, upload = self.prepare_upload(csv_file, zip_file, columns)
        try:
            hint = missing_images_hint(dataset, bool(zip_file))
            if hint and not dataset.examples:
                raise ValueError(hint)
            status = self.jobs.start(
                owner, dataset, source, overrides, name, base, overwrite, val_fraction, time_limit_s, review
            )
        except BaseException:
            upload.remove()
            raise
        upload.keep()  # the job deletes it when it ends (or, when it can resume, when it expires)
        return status

    # --- the data audit and its review ----------------------------------------------------
    def start_audit(self, owner: str, csv_file: str, zip_file: str | None, columns: tuple[str, ...],
                    base: str | None = None) -> dict:  # fmt: skip
        """Queue an audit of the upload (wrong labels, duplicates, outliers) as the visitor's job,
        with ``base``'s encoders when one is given (else the recipe's)."""
        dataset, source, upload = self.prepare_upload(csv_file, zip_file, columns)
        try:
            hint = missing_images_hint(dataset, bool(zip_file))
            if hint and not dataset.examples:
                raise ValueError(hint)
            init = self.registry.path(base, owner) if base else None
            status = self.jobs.start_audit(owner, dataset, source, init, file_digest(source.csv))
        except BaseException:
            upload.remove()
            raise
        upload.keep()  # the audit keeps it while it is the visitor's latest job (the review's pictures)
        return status

    def audit_review(self, owner: str) -> dict | None:
        """The visitor's latest audit: its state, findings (most sure first), decisions and the
        folder its pictures are in; None when they have none."""
        record = self.jobs.audit(owner)
        if record is None:
            return None
        return {
            "id": record["id"],
            "state": record["state"],
            "message": record["message"],
            "findings": record["audit"].get("findings", []),
            "more": record["audit"].get("more", 0),
            "counts": record["audit"].get("counts", {}),
            "summary": record["audit"].get("summary", ""),
            "decisions": record.get("decisions", {}),
            "folder": record["data"]["folder"],
            "csv_name": record["data"].get("name", "data.csv"),
        }

    def decide(self, owner: str, rows: list[int], action: str | None, label: str | None = None) -> dict:
        """The visitor's decision for flagged rows of their latest audit (None: undo it)."""
        from ..audit.review import check_decision

        decision = None if action is None else check_decision(action, label)
        self.jobs.decide(owner, [int(r) for r in rows], decision)
        return self.audit_review(owner)

    def review_csv(self, owner: str) -> str:
        """The review as a CSV (every finding with its decision), one file per visitor, replaced."""
        from ..audit.review import write_decisions

        review = self.audit_review(owner)
        if review is None or review["state"] != "done":
            raise ValueError("audit the data first: there is no finished audit of yours to download")
        folder = self.work_dir / "reviews" / owner
        folder.mkdir(parents=True, exist_ok=True)
        return str(write_decisions(review["findings"], review["decisions"], folder / "review.csv"))

    def start_reviewed_job(
        self,
        owner: str,
        csv_file: str,
        zip_file: str | None,
        columns: tuple[str, ...],
        overrides: dict | None,
        name: str,
        base: str | None,
        overwrite: bool,
        val_fraction: float,
        time_limit_s: float | None = None,
    ) -> dict:
        """Queue a fine-tune on the upload with the visitor's review of its audit applied (the
        rows excluded left out, the relabelled ones with their new label); the upload is unchanged,
        and the training record and the model card list the decisions."""
        from ..audit.review import review_record

        review = self.audit_review(owner)
        if review is None or review["state"] != "done":
            raise ValueError("audit the data first (press 'Audit data' and wait for it to finish)")
        if not csv_file or file_digest(Path(csv_file)) != self.jobs.audit(owner)["digest"]:
            raise ValueError(
                "the CSV is not the one that was audited: press 'Audit data' again for this CSV, or upload the"
                f" audited one ({review['csv_name']})"
            )
        record = review_record(review["decisions"], review["findings"], review["counts"])
        decisions = {row: d for row, d in review["decisions"].items() if d["action"] != "keep"}
        return self.start_job(
            owner, csv_file, zip_file, columns, overrides, name, base, overwrite, val_fraction, time_limit_s,
            review={"decisions": decisions, "record": record, "audit": review["id"]},
        )  # fmt: skip

    def resume_job(self, owner: str, job: str | None = None, time_limit_s: float | None = None) -> dict:
        """Continue the owner's stopped, interrupted or time-limited job from its last saved epoch."""
        return self.jobs.resume(owner, job or None, time_limit_s)

    def download(self, name: str, owner: str | None) -> str:
        """A zip of a shipped checkpoint or one of the owner's (one file per owner, replaced)."""
        folder = self.work_dir / "downloads" / (owner or "public")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return str(self.registry.zip(name, folder, owner))

    def close(self) -> None:
        """At shutdown: the jobs closed (a running worker told, its job left resumable) and the
        work folder this App made removed."""
        self.jobs.close()
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's content (an uploaded CSV: the review applies to that content only)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
