"""Evaluate a checkpoint on a labelled data set, row by row, for the Evaluate tab, the report
and ``python -m mmdemo evaluate --report``.

A data set is a labelled CSV (image,text,label + any other columns, which become slices such
as a question type), optionally with a zip of its images, or the built-in Sort-of-CLEVR
benchmark generated on the fly. Every row goes through ``Predictor.predict_batch`` in the same
batches of CSV rows as batch ``predict`` (16 rows by default), so the accuracy here is the
accuracy a user computes from ``predict --csv``'s output, to the row.

``faithfulness`` measures the heatmaps of a bounded sample of the set (deletion and insertion
areas of both explanation methods, and the model-randomisation check; faithfulness.py), which
``evaluate`` prints and the report shows.

Results keep, per row, the prediction, its confidence, whether it is right, the slice values,
the heatmap (grid) and its peak; ``summarize`` turns them into accuracy, macro-F1, calibration
(ECE, 15 equal-width bins of top-label confidence), accuracy per value of a chosen column, and
the confusion matrix, each confusion cell with the indices of its rows.

A checkpoint of several tasks is evaluated on every task whose label column the CSV has
(``task_columns``): the result is the first such task's, and ``EvalResult.tasks`` holds each
task's own result, over the rows with a label for it, so every summary, filter and figure
works on one task at a time (``task_result``). Each task's heatmap explains its own answer.

No gradio here: the UI (mmdemo/ui/evaluate.py) and the CLI call these functions.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from ..datasets.archives import extract_zip
from ..datasets.csv_table import Example, column_list, read_csv, read_separator
from ..datasets.sortofclevr import RADIUS, generate
from ..explain.faithfulness import dataset_faithfulness, reinitialise, sample_indices
from ..explain.methods import DEFAULT_METHOD, METHODS
from ..explain.relations import Box, find_objects
from ..imaging import decode_image
from ..inference.predictor import Predictor
from ..metrics import classification_report
from ..model.checkpoint import load_checkpoint

BATCH_SIZE = 16  # batch predict's default (cli.py), so batches and results are the same
ECE_BINS = 15
MAX_SLICE_VALUES = 50  # a column with more distinct values is an id, not a slice
MAX_NUMERIC_SLICE_VALUES = 12  # ... and a numeric one with more is a measurement
MAX_ROWS = 20_000  # rows evaluated in the app per run (a bound for a shared server)
FAITHFULNESS_ROWS = 16  # rows whose heatmaps are measured per evaluation (each costs ~70 forwards)
BENCHMARK_SEED = 4242  # the built-in benchmark's scenes: fixed, so two runs see the same rows


@dataclass
class EvalSet:
    """Labelled rows ready to evaluate, with every CSV column kept for slicing."""

    name: str
    examples: list[Example]
    columns: dict[int, dict[str, str]]  # CSV row number -> every value of that row
    slice_columns: list[str]  # the columns that can slice the results
    rejected: list[tuple[int, str]]
    report: str  # the data set's pre-flight report
    image_column: str = "image"
    extra_columns: list[str] = field(default_factory=list)  # every column but image, text, label
    folder: Path | None = None  # the upload's own folder (extracted zip), None for files in place
    label_columns: list[str] = field(default_factory=lambda: ["label"])
    # the checkpoint's task each label column answers, in the same order; empty: the one label
    # column answers the checkpoint's first task
    tasks: list[str] = field(default_factory=list)

    def delete(self) -> None:
        """Remove the upload's folder (the UI does when the visitor's next run replaces it)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class RowResult:
    index: int  # position in EvalResult.rows
    row: int  # the CSV row number (header = 1)
    image: str  # the image file
    image_name: str  # as the CSV names it
    text: str
    label: str
    prediction: str
    confidence: float
    correct: bool
    scores: dict[str, float]
    peak_xy: tuple[float, float]
    heatmap: list[list[float]]  # the whole text's heatmap at grid size, in [0, 1]
    slices: dict[str, str]  # the row's other columns (slice_columns are the ones worth grouping by)
    in_scope: bool | None = None  # when the checkpoint's predictions say so


@dataclass
class EvalResult:
    checkpoint: str
    method: str
    dataset: str
    labels: list[str]  # the model's labels (of ``task``)
    rows: list[RowResult]
    slice_columns: list[str]
    rejected: list[tuple[int, str]] = field(default_factory=list)
    n_total: int = 0  # rows that were to be evaluated
    stopped: bool = False  # stopped before the end: rows holds what was done
    seconds: float = 0.0
    task: str = ""  # the task whose answers the rows hold ("" : the checkpoint's only one)
    # several tasks evaluated: each task's own result (the first's rows are this result's)
    tasks: dict[str, EvalResult] = field(default_factory=dict)


def task_result(result: EvalResult, task: str | None = None) -> EvalResult:
    """The result of one task (None, or a result of one task: the result itself)."""
    if not task or not result.tasks:
        return result
    if task not in result.tasks:
        raise ValueError(f"this evaluation has no task {str(task)[:60]!r}; its tasks are {', '.join(result.tasks)}")
    return result.tasks[task]


Progress = Callable[[int, int], None]  # (rows done, rows in all)


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _slice_columns(fields: list[str], rows: list[dict[str, str]], used: set[str]) -> list[str]:
    """Columns worth grouping rows by: 2 to MAX_SLICE_VALUES distinct values, and not a
    measurement (a numeric column with more than MAX_NUMERIC_SLICE_VALUES values, such as a
    coordinate or an id)."""
    out = []
    for name in fields:
        if name in used:
            continue
        values = {r.get(name) or "" for r in rows}
        numeric = all(_is_number(v) for v in values if v)
        if 1 < len(values) <= (MAX_NUMERIC_SLICE_VALUES if numeric else MAX_SLICE_VALUES):
            out.append(name)
    return out


def _raw_rows(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    separator = read_separator(csv_path)
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=separator)
        return list(reader.fieldnames or []), list(reader)


def csv_header(csv_path: str | Path) -> list[str]:
    """A CSV's column names (none when the file cannot be read: reading it fails later, with its message)."""
    try:
        separator = read_separator(csv_path)
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            return [c.strip() for c in next(csv.reader(f, delimiter=separator), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def task_columns(
    header: list[str], task_names: list[str], given: str | list[str] | None = None
) -> tuple[list[str], list[str]]:
    """The label columns to evaluate a checkpoint on, and the task each answers. Without
    ``given`` columns: every task whose name is a column, when the checkpoint has several tasks
    (or when the CSV has no ``label`` column), else ``label``. Given columns named as tasks
    answer those tasks; others answer the tasks in order (the first column the first task)."""
    if given is None:
        named = [t for t in task_names if t in header]
        if named and (len(task_names) > 1 or "label" not in header):
            return named, named
        given = "label"
    columns = column_list(given)
    if all(c in task_names for c in columns):
        return columns, columns
    if len(columns) > len(task_names):
        raise ValueError(
            f"{len(columns)} label columns ({', '.join(columns)}) but the checkpoint answers "
            f"{len(task_names)} task(s): {', '.join(task_names)}"
        )
    return columns, task_names[: len(columns)]


def load_csv_set(
    csv_path: str | Path,
    zip_path: str | Path | None = None,
    work_dir: str | Path | None = None,
    image_column: str = "image",
    text_column: str | list[str] = "text",
    label_column: str | list[str] | None = None,
    task_names: list[str] | None = None,
) -> EvalSet:
    """A labelled CSV (+ a zip of its images) -> EvalSet. With a zip, or with ``work_dir``
    (an upload), the CSV is copied next to the extracted images and every image path must stay
    inside that folder; without either, paths are relative to the CSV's own folder.
    ``task_names``: the checkpoint's tasks, whose columns are read (``task_columns``; None: one
    task, the ``label_column``, default ``label``)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ValueError(f"CSV file not found: {csv_path.name}")
    confine = zip_path is not None or work_dir is not None
    folder = None
    if confine:
        if work_dir is not None:
            Path(work_dir).mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="evalset-", dir=work_dir))
        if zip_path:
            extract_zip(zip_path, folder)
        target = folder / "data.csv"
        target.write_bytes(csv_path.read_bytes())
        csv_path = target
    try:
        if task_names is None:
            label_columns, tasks = column_list(label_column or "label"), []
        else:
            label_columns, tasks = task_columns(csv_header(csv_path), task_names, label_column)
        if task_names and tasks == task_names[:1]:
            tasks = []  # the first task alone: evaluated as a checkpoint of one task is
        dataset = read_csv(csv_path, image_column, text_column, label_columns, confine=confine)
    except ValueError:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    if not dataset.examples:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        reasons = "; ".join(f"row {r}: {m}" for r, m in dataset.rejected[:3])
        raise ValueError(f"{csv_path.name}: no valid rows to evaluate" + (f" ({reasons} ...)" if reasons else ""))
    fields, raw = _raw_rows(csv_path)
    columns = {i + 2: row for i, row in enumerate(raw)}
    used = {image_column, *column_list(text_column), *label_columns}
    return EvalSet(
        extra_columns=[f for f in fields if f not in used],
        name=csv_path.name,
        examples=dataset.examples,
        columns=columns,
        slice_columns=_slice_columns(fields, raw, used),
        rejected=dataset.rejected,
        report=dataset.report(),
        image_column=image_column,
        folder=folder,
        label_columns=label_columns,
        tasks=tasks,
    )


def benchmark_set(folder: str | Path, n_images: int = 10, seed: int = BENCHMARK_SEED) -> EvalSet:
    """The built-in Sort-of-CLEVR benchmark: ``n_images`` fresh scenes, 20 canonical questions
    each, with question type, colour and object positions as columns."""
    if not 1 <= n_images <= MAX_ROWS // 20:
        raise ValueError(f"the benchmark takes 1 to {MAX_ROWS // 20} images, got {n_images}")
    target = Path(folder) / f"sort-of-clevr-{seed}-{n_images}"
    if not (target / "data.csv").is_file():  # the same seed gives the same scenes: generate once
        Path(folder).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
        generate(tmp, n_images, seed, "canonical")
        try:  # atomic: a visitor never reads a half-written set, nor one being rewritten
            tmp.rename(target)
        except OSError:  # another run got there first
            shutil.rmtree(tmp, ignore_errors=True)
    result = load_csv_set(target / "data.csv")
    result.name = f"Sort-of-CLEVR benchmark ({n_images} scenes, seed {seed})"
    result.slice_columns = ["qtype", "relational", "color"]  # the others are object positions
    return result


def _in_scope(prediction) -> bool | None:
    """The prediction's out-of-scope flag, where the checkpoint provides one."""
    value = getattr(prediction, "in_scope", None)
    if value is None and hasattr(prediction, "to_json"):
        value = prediction.to_json().get("in_scope")
    return None if value is None else bool(value)


def evaluate(
    predictor: Predictor,
    evalset: EvalSet,
    checkpoint: str,
    method: str = DEFAULT_METHOD,
    batch_size: int = BATCH_SIZE,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    max_rows: int | None = None,
) -> EvalResult:
    """Predict every row in batches of ``batch_size`` consecutive CSV rows (as batch predict
    does). ``should_stop`` is checked between batches; a stopped run keeps the rows done.
    With ``evalset.tasks``, each task's rows go to its own result (``EvalResult.tasks``)."""
    start = time.perf_counter()
    examples = evalset.examples
    if max_rows is not None and len(examples) > max_rows:
        raise ValueError(f"{evalset.name}: {len(examples):,} rows, over the limit of {max_rows:,} per evaluation")
    batches: dict[int, list[Example]] = defaultdict(list)
    for example in examples:
        batches[(example.row - 2) // batch_size].append(example)
    # (label column, task, its labels) per task evaluated; task None: the checkpoint's first, as ever
    if evalset.tasks:
        labels = dict(zip(predictor.task_names, predictor.config.task_labels()))
        missing = [t for t in evalset.tasks if t not in labels]
        if missing:
            raise ValueError(
                f"{checkpoint} has no task {', '.join(missing)} (its tasks: {', '.join(predictor.task_names)})"
            )
        answered = [(c, t, labels[t]) for c, t in zip(evalset.label_columns, evalset.tasks)]
    else:
        answered = [(evalset.label_columns[0], None, list(predictor.labels))]
    results = {
        task: EvalResult(
            checkpoint=checkpoint,
            method=method,
            dataset=evalset.name,
            labels=list(labels),
            rows=[],
            slice_columns=evalset.slice_columns,
            rejected=list(evalset.rejected),
            n_total=sum(1 for e in examples if _label(e, column)),
            task=task or "",
        )
        for column, task, labels in answered
    }
    images: dict[Path, Image.Image] = {}
    done, stopped = 0, False
    for key in sorted(batches):
        if should_stop and should_stop():
            stopped = True
            break
        batch = batches[key]
        decoded = []
        for e in batch:
            if e.image not in images:
                images.clear()  # keep one batch's images: rows of one scene are consecutive
                images[e.image] = decode_image(e.image, name=e.image.name)
            decoded.append(images[e.image])
        texts = [e.text for e in batch]
        predictions = predictor.predict_batch(decoded, texts, method)
        heatmaps: dict[int, list[list[float]]] = {}  # one list per explanation, shared by the tasks it explains
        for column, task, _ in answered:
            # the heatmap explains this task's answer: the raw one is the same for every task
            # (attention does not depend on the head), the gradient one is not
            own = predictions
            if task is not None and method != "raw" and task != predictor.task_names[0]:
                own = predictor.predict_batch(decoded, texts, method, task)
            rows = results[task].rows
            for e, p, q in zip(batch, predictions, own):
                label = _label(e, column)
                if label:
                    if id(q) not in heatmaps:
                        heatmaps[id(q)] = [[round(float(v), 4) for v in r] for r in q.explanation.heatmap]
                    answer = p if task is None else p.tasks[task]
                    rows.append(_row(len(rows), e, label, answer, q, heatmaps[id(q)], evalset))
        done += len(batch)
        if progress:
            progress(done, len(examples))
    seconds = time.perf_counter() - start
    for r in results.values():
        r.stopped, r.seconds = stopped, seconds
    first = next(iter(results.values()))
    if len(results) > 1:
        first = EvalResult(**{**first.__dict__, "tasks": results})
    return first


def _label(e: Example, column: str) -> str:
    """A row's label in ``column`` ("" when it has none): rows read with one label column keep it in ``label``."""
    return e.labels.get(column, "") if e.labels else e.label


def _row(index: int, e: Example, label: str, answer, explained, heatmap: list, evalset: EvalSet) -> RowResult:
    """One row's result: ``answer`` is the Prediction (one task) or a task's answer dict
    (Prediction.tasks), ``explained`` the Prediction whose ``heatmap`` explains it."""
    values = evalset.columns.get(e.row, {})
    if isinstance(answer, dict):
        prediction, scores = answer["label"], answer["scores"]
    else:
        prediction, scores = answer.label, answer.scores
    return RowResult(
        index=index,
        row=e.row,
        image=str(e.image),
        image_name=values.get(evalset.image_column) or e.image.name,
        text=e.text,
        label=label,
        prediction=prediction,
        confidence=scores[prediction],
        correct=prediction == label,
        scores=scores,
        peak_xy=explained.explanation.peak_xy,
        heatmap=heatmap,
        slices={c: values.get(c, "") for c in evalset.extra_columns},
        in_scope=_in_scope(explained),
    )


def faithfulness(
    checkpoint: str | Path,
    predictor: Predictor,
    pairs: Sequence[tuple[str | Path, str]],
    n: int = FAITHFULNESS_ROWS,
    methods: Sequence[str] = METHODS,
    steps: int = 8,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict | None:
    """Faithfulness of both explanation methods on ``n`` (image file, text) pairs spread evenly
    over ``pairs``: mean deletion / insertion areas and the rank correlation with the heatmaps
    of the checkpoint's model with its fusion re-initialised (a second copy, loaded from
    ``checkpoint``; the predictor's own model is not touched). None when there is nothing to
    measure (``n`` = 0 or no rows). ``progress(what, done, total)`` as each row is measured."""
    picked = [pairs[i] for i in sample_indices(len(pairs), n)]
    if not picked:
        return None
    if progress:
        progress("loading a copy of the model with its fusion re-initialised", 0, len(picked))
    model = load_checkpoint(checkpoint)
    reinitialise(model.fusion)
    randomised = Predictor(model, predictor.device, backend="torch")  # two batches: no ONNX export
    images = [decode_image(image, name=Path(image).name) for image, _ in picked]
    texts = [text for _, text in picked]
    result = dataset_faithfulness(predictor, randomised, images, texts, methods, steps, progress=progress)
    result["sampled_from"] = len(pairs)
    return result


# -- summaries ----------------------------------------------------------------------------


def calibration(confidences: list[float], correct: list[bool], n_bins: int = ECE_BINS) -> dict:
    """Expected calibration error over ``n_bins`` equal-width bins of top-label confidence
    (bin i holds (i/n, (i+1)/n]), with each bin's count, accuracy and mean confidence (the
    reliability diagram)."""
    conf = np.asarray(confidences, dtype=np.float64)
    hits = np.asarray(correct, dtype=np.float64)
    bins = []
    ece = 0.0
    which = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    for i in range(n_bins):
        mask = which == i
        count = int(mask.sum())
        entry = {"lo": i / n_bins, "hi": (i + 1) / n_bins, "count": count, "accuracy": None, "confidence": None}
        if count:
            entry["accuracy"] = float(hits[mask].mean())
            entry["confidence"] = float(conf[mask].mean())
            ece += count / len(conf) * abs(entry["accuracy"] - entry["confidence"])
        bins.append(entry)
    return {"ece": ece if len(conf) else 0.0, "bins": bins, "mean_confidence": float(conf.mean()) if len(conf) else 0.0}


def _pointing(rows: list[RowResult]) -> dict | None:
    """Sort-of-CLEVR rows carry the asked object's centre: how often the heatmap's peak lies in
    its box, over the non-relational questions (where the answer is about that object)."""
    hits = [
        abs(r.peak_xy[0] - float(r.slices["target_x"])) <= RADIUS
        and abs(r.peak_xy[1] - float(r.slices["target_y"])) <= RADIUS
        for r in rows
        if r.slices.get("relational") == "0" and r.slices.get("target_x", "") != ""
    ]
    return {"peak_in_asked_object": sum(hits) / len(hits), "n": len(hits)} if hits else None


def summarize(result: EvalResult, slice_column: str | None = None) -> dict:
    """Accuracy, macro-F1, per-class figures, calibration, accuracy per slice value, and the
    confusion matrix with the row indices of each cell; with several tasks, the first task's,
    and ``tasks``: each task's summary."""
    rows = result.rows
    truth = [r.label for r in rows]
    predicted = [r.prediction for r in rows]
    labels = result.labels + sorted(set(truth) - set(result.labels))  # unknown labels count as errors
    report = classification_report(truth, predicted, labels)
    index = {label: i for i, label in enumerate(labels)}
    cells: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        cells[f"{index[r.label]},{index[r.prediction]}"].append(r.index)
    report["confusion"]["cells"] = dict(cells)
    report["calibration"] = calibration([r.confidence for r in rows], [r.correct for r in rows])
    report["ece"] = report["calibration"]["ece"]
    if slice_column:
        groups: dict[str, list[bool]] = defaultdict(list)
        for r in rows:
            groups[r.slices.get(slice_column, "")].append(r.correct)
        report["slices"] = {
            "column": slice_column,
            "values": {v: {"n": len(h), "accuracy": sum(h) / len(h)} for v, h in sorted(groups.items())},
        }
    flags = [r.in_scope for r in rows if r.in_scope is not None]
    if flags:
        report["out_of_scope"] = sum(not f for f in flags)
    pointing = _pointing(rows)
    if pointing:
        report["pointing"] = pointing
    report.update(
        checkpoint=result.checkpoint,
        method=result.method,
        dataset=result.dataset,
        rows_evaluated=len(rows),
        rows_total=result.n_total,
        rows_rejected=len(result.rejected),
        stopped=result.stopped,
        seconds=round(result.seconds, 2),
    )
    if result.tasks:
        report["tasks"] = {task: summarize(r, slice_column) for task, r in result.tasks.items()}
    return report


def filter_rows(
    result: EvalResult,
    wrong_only: bool = False,
    true_label: str | None = None,
    predicted_label: str | None = None,
    slice_column: str | None = None,
    slice_value: str | None = None,
    out_of_scope_only: bool = False,
) -> list[RowResult]:
    """The rows that pass every filter given (None or "" = no filter on that)."""
    out = []
    for r in result.rows:
        if wrong_only and r.correct:
            continue
        if true_label and r.label != true_label:
            continue
        if predicted_label and r.prediction != predicted_label:
            continue
        if slice_column and slice_value not in (None, "") and r.slices.get(slice_column) != slice_value:
            continue
        if out_of_scope_only and r.in_scope is not False:
            continue
        out.append(r)
    return out


def worst_errors(result: EvalResult, n: int = 8) -> list[RowResult]:
    """The wrong rows the model was most confident about."""
    return sorted((r for r in result.rows if not r.correct), key=lambda r: -r.confidence)[:n]


def disagreements(a: EvalResult, b: EvalResult) -> list[tuple[RowResult, RowResult]]:
    """Rows (matched by CSV row) that the two results answer differently."""
    by_row = {r.row: r for r in b.rows}
    return [(r, by_row[r.row]) for r in a.rows if r.row in by_row and by_row[r.row].prediction != r.prediction]


class PeakShift(NamedTuple):
    """A row whose two heatmaps peak in different places: ``where_a`` and ``where_b`` say where,
    in words ("the object at (12, 40)", "region row 2, column 5")."""

    a: RowResult
    b: RowResult
    where_a: str
    where_b: str


def _peak_place(row: RowResult, boxes: list[Box]) -> tuple[tuple, str]:
    """Where a row's heatmap peaks: the object under (or nearest) its peak when the image is a
    scene of objects on a plain background (``boxes``), else the heatmap's hottest grid cell. A
    key to compare, and the words to show."""
    if boxes:
        x, y = row.peak_xy

        def gap(box: Box) -> float:  # 0 inside the box
            return max(box[0] - x, 0.0, x - box[2]) ** 2 + max(box[1] - y, 0.0, y - box[3]) ** 2

        box = min(boxes, key=gap)
        return box, f"the object at ({(box[0] + box[2]) / 2:.0f}, {(box[1] + box[3]) / 2:.0f})"
    grid = np.asarray(row.heatmap, dtype=np.float64)
    r, c = np.unravel_index(int(grid.argmax()), grid.shape)
    return (int(r), int(c)), f"region row {r + 1}, column {c + 1} of {grid.shape[0]} x {grid.shape[1]}"


def peak_shifts(a: EvalResult, b: EvalResult) -> list[PeakShift]:
    """Rows (matched by CSV row) whose heatmaps in ``a`` and ``b`` peak on different objects
    (scenes of flat-coloured objects, relations.find_objects) or, for other images, in different
    cells of the heatmap's grid: what a comparison of two explanation methods can find, since
    the method changes the explanation, never the answer."""
    by_row = {r.row: r for r in b.rows}
    objects: dict[str, list[Box]] = {}
    shifts = []
    for ra in a.rows:
        rb = by_row.get(ra.row)
        if rb is None:
            continue
        if ra.image not in objects:
            try:
                objects[ra.image] = find_objects(decode_image(ra.image, name=Path(ra.image).name))
            except ValueError:  # the image is gone since the run: its grid cells still compare
                objects[ra.image] = []
        (key_a, where_a), (key_b, where_b) = _peak_place(ra, objects[ra.image]), _peak_place(rb, objects[ra.image])
        if key_a != key_b:
            shifts.append(PeakShift(ra, rb, where_a, where_b))
    return shifts


def image_digest(path: str | Path) -> str:
    """A short content hash naming an image in ratings and exports."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


class StoreFull(ValueError):
    """The server holds as many evaluations as it may; the message says when room frees up."""


class ResultStore:
    """Evaluation results per visitor, in memory: each visitor's latest finished run.

    Keyed by the visitor id the UI resolved on the server from the owner token (never a session
    hash); a visitor sees only its own. Only ``put`` creates an entry, after a run has finished,
    so a refused or failed request stores nothing and reading never makes room for anybody.
    Bounds: one evaluation per visitor (a new run replaces it, and the previous upload's files
    are deleted); an entry unused for ``ttl_s`` is dropped with its files; and all entries
    together hold at most ``max_visitors`` runs and ``max_rows`` rows (memory: each row keeps
    its heatmap). When full, a new visitor's run is refused (``StoreFull``) instead of evicting
    another visitor's result: one visitor's requests can never wipe another's."""

    def __init__(
        self,
        max_visitors: int = 64,
        max_rows: int = 60_000,
        ttl_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._items: dict[str, dict] = {}
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()
        self.max_visitors, self.max_rows, self.ttl_s = max_visitors, max_rows, ttl_s
        self._clock = clock

    @staticmethod
    def _rows(item: dict) -> int:
        result = item.get("result")
        if not isinstance(result, EvalResult):
            return 0
        return sum(len(r.rows) for r in result.tasks.values()) if result.tasks else len(result.rows)

    def _expire(self, now: float) -> None:
        for visitor in [v for v, t in self._used.items() if now - t > self.ttl_s]:
            self._drop(visitor)

    def _drop(self, visitor: str, keep_folder: Path | None = None) -> None:
        old = self._items.pop(visitor, None)
        self._used.pop(visitor, None)
        data = (old or {}).get("data")
        if isinstance(data, EvalSet) and (keep_folder is None or data.folder != keep_folder):
            data.delete()

    def get(self, visitor: str) -> dict | None:
        """The visitor's evaluation (its state dict, which the UI may update), or None."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            item = self._items.get(visitor)
            if item is not None:
                self._used[visitor] = now
            return item

    def room(self, visitor: str, rows: int) -> None:
        """Refuse (StoreFull) a run of ``rows`` rows that could not be kept; checked before the
        run starts, so nobody waits for a result the server must throw away."""
        with self._lock:
            self._expire(self._clock())
            self._check(visitor, rows)

    def _check(self, visitor: str, rows: int) -> None:
        others = {v: item for v, item in self._items.items() if v != visitor}
        held = sum(self._rows(item) for item in others.values())
        if len(others) >= self.max_visitors or held + rows > self.max_rows:
            minutes = max(1, round(self.ttl_s / 60))
            raise StoreFull(
                f"the server is holding as many evaluations as it can ({len(others)} visitors, {held:,} rows; "
                f"at most {self.max_visitors} and {self.max_rows:,}); evaluate fewer rows, or try again "
                f"later (an evaluation is dropped {minutes} min after its last use)"
            )

    def put(self, visitor: str, **state) -> dict:
        """Keep a finished run as the visitor's evaluation, replacing theirs (StoreFull when it
        does not fit; the caller then deletes the run's files)."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            self._check(visitor, self._rows(state))
            data = state.get("data")
            self._drop(visitor, keep_folder=data.folder if isinstance(data, EvalSet) else None)
            self._items[visitor] = dict(state)
            self._used[visitor] = now
            return self._items[visitor]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
