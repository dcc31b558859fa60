"""Training data from a CSV: reading, validation, and the pre-flight report.

A CSV has an image column (paths relative to the CSV's folder), a text column and a label
column (``image,text,label`` unless named otherwise). Every row is either accepted or
reported with its row number and the reason; nothing is silently dropped or zero-filled.
Row numbers are the spreadsheet's: the header is row 1, the first data row is row 2.
Labels stay strings ("01" and "1" are different classes). The separator is read from the
header line (a comma, semicolon, tab or bar: what spreadsheets write) and the report names it
when it is not a comma.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..imaging import MAX_PIXELS, decode_image
from ..model.preprocess import is_blank

IMBALANCE_RATIO = 5.0  # warn when the largest class is this many times the smallest
# labels a spreadsheet or pandas writes for a missing value: never a class
MISSING_LABELS = frozenset({"nan", "none", "null", "n/a", "#n/a"})
SEPARATORS = ",;\t|"
SEPARATOR_NAMES = {",": "',' (comma)", ";": "';' (semicolon)", "\t": "tab", "|": "'|' (bar)"}
MAX_HEADER_CHARS = 65536
NAMED_ROWS = 5  # rows named in a one-line summary (the rest are counted)
# several text columns are joined with the WordPiece tokenizer's separator token (the text
# encoders' tokenizer, model/encoders.py), in the order the columns are given
TEXT_SEPARATOR = " [SEP] "


def column_list(columns: str | list[str] | tuple[str, ...]) -> list[str]:
    """Column names from one name, a comma-separated list, or a list of either."""
    names = [columns] if isinstance(columns, str) else list(columns)
    return [c.strip() for name in names for c in name.split(",") if c.strip()]


def join_texts(parts: list[str]) -> str:
    """One text from several text columns' values (empty ones left out), in column order."""
    return TEXT_SEPARATOR.join(p for p in parts if p)


def sniff_separator(header_line: str) -> str:
    """The separator of a CSV, from its header line: one of SEPARATORS (a comma when the line has
    a single column or Python's csv.Sniffer cannot tell)."""
    try:
        return csv.Sniffer().sniff(header_line, delimiters=SEPARATORS).delimiter
    except csv.Error:
        return ","


def read_separator(csv_path: str | os.PathLike) -> str:
    """``sniff_separator`` of a CSV file's first line (at most MAX_HEADER_CHARS of it)."""
    with open(csv_path, newline="", encoding="utf-8-sig", errors="replace") as f:
        return sniff_separator(f.readline(MAX_HEADER_CHARS))


def named_rows(rows: list[tuple[int, str]], limit: int = NAMED_ROWS) -> str:
    """The first few (row, name) pairs, and how many more: "row 3 (img/1.png), row 6 (img/4.png) and 4 more"."""
    shown = ", ".join(f"row {row} ({name})" for row, name in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


@dataclass
class Example:
    row: int
    image: Path
    text: str
    label: str  # the first task's label ("" when a row of several tasks has none for it)
    group: str = ""  # the row's source (a product, a patient, a scene) from a group column, if any
    labels: dict[str, str] = field(default_factory=dict)  # task -> label ("" = none) when there are several tasks

    def task_label(self, task: str, first: bool) -> str:
        """This row's label for ``task`` ("" when it has none); ``first``: it is the first task."""
        return self.label if first else self.labels.get(task, "")


@dataclass
class Dataset:
    csv_path: Path
    examples: list[Example]
    rejected: list[tuple[int, str]]  # (row, reason)
    labels: list[str]  # sorted
    class_counts: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    separator: str = ","
    group_column: str = ""  # the column that named each row's group, if any
    tasks: list[str] = field(default_factory=list)  # the label columns, when there are several
    task_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # task -> label -> rows
    empty_labels: dict[str, int] = field(default_factory=dict)  # task -> rows without a label for it
    text_columns: list[str] = field(default_factory=list)  # when several are joined
    truncated_rows: int | None = None  # rows whose text is cut at the model's token limit (count_truncated)
    max_tokens: int | None = None

    def task_names(self) -> list[str]:
        """The tasks this data trains: its label columns ("label" for one unnamed column)."""
        return self.tasks or ["label"]

    def task_labels(self) -> list[list[str]]:
        """Each task's labels, sorted."""
        if not self.tasks:
            return [self.labels]
        return [sorted(self.task_counts[t]) for t in self.tasks]

    def report(self) -> str:
        """The pre-flight report, as plain text."""
        lines = [f"{self.csv_path.name}: {len(self.examples)} rows accepted, {len(self.rejected)} rejected"]
        if self.separator != ",":
            lines.append(f"columns separated by {SEPARATOR_NAMES[self.separator]}")
        for row, reason in self.rejected[:50]:
            lines.append(f"  row {row}: {reason}")
        if len(self.rejected) > 50:
            lines.append(f"  ... and {len(self.rejected) - 50} more rejected rows")
        if self.tasks:
            lines.append(f"{len(self.tasks)} tasks, one per label column: " + ", ".join(self.tasks))
            for task in self.tasks:
                counts = ", ".join(f"{k}={v}" for k, v in self.task_counts[task].items())
                empty = self.empty_labels.get(task, 0)
                lines.append(
                    f"  {task}: {counts}"
                    + (f"; {empty} rows without a {task} (they train the other tasks)" if empty else "")
                )
        else:
            lines.append("class counts: " + ", ".join(f"{k}={v}" for k, v in self.class_counts.items()))
        if self.text_columns:
            lines.append(
                f"text: the columns {', '.join(self.text_columns)} joined in this order, separated by{TEXT_SEPARATOR.rstrip()}"
            )
        if self.truncated_rows:
            lines.append(
                f"{self.truncated_rows} rows have a text longer than the model's limit of {self.max_tokens} tokens:"
                " the rest of their text is not read"
            )
        if self.group_column:
            ungrouped = sum(1 for e in self.examples if not e.group)
            lines.append(
                f"groups ({self.group_column}): {len({e.group for e in self.examples if e.group})}; the rows of one group"
                " stay on one side of the validation split"
                + (
                    f" ({ungrouped} rows with an empty {self.group_column} are grouped by their image)"
                    if ungrouped
                    else ""
                )
            )
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def read_csv(
    csv_path: str | os.PathLike,
    image_column: str = "image",
    text_column: str | list[str] = "text",
    label_column: str | list[str] = "label",
    image_root: str | os.PathLike | None = None,
    check_images: bool = True,
    confine: bool = False,
    max_rows: int | None = None,
    max_text_chars: int | None = None,
    max_pixels: int = MAX_PIXELS,
    group_column: str | None = None,
) -> Dataset:
    """Read and validate a training CSV.

    ``image_root`` is the folder image paths are relative to (default: the CSV's folder).
    ``check_images`` decodes every image once, so unreadable ones are reported up front.
    ``confine`` rejects absolute paths and paths that leave ``image_root`` (for uploads).
    ``max_rows``, ``max_text_chars`` and ``max_pixels`` bound web uploads (the CLI passes none).
    ``group_column`` names each row's source: rows of one group are never split between training
    and validation (splits.py); a row with an empty group is grouped by its image.
    Several ``text_column``s are joined (join_texts); several ``label_column``s are several tasks:
    a row needs a label in one of them, and an empty cell leaves that task out for the row.
    """
    text_columns, label_columns = column_list(text_column), column_list(label_column)
    if not text_columns or not label_columns:
        raise ValueError("name at least one text column and one label column")
    repeated = sorted({c for names in (text_columns, label_columns) for c in names if names.count(c) > 1})
    if repeated:
        raise ValueError(f"column(s) {repeated} named more than once among the text columns or the label columns")
    text_column, label_column = text_columns[0], label_columns[0]
    several = len(label_columns) > 1
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ValueError(f"CSV file not found: {csv_path.name}")
    root = Path(image_root) if image_root is not None else csv_path.resolve().parent
    try:
        separator = read_separator(csv_path)
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=separator)
            found = list(reader.fieldnames or [])
            duplicated = sorted({c for c in found if found.count(c) > 1})
            if duplicated:
                raise ValueError(f"{csv_path.name}: the header names column(s) {duplicated} more than once")
            expected = [image_column, *text_columns, *label_columns] + ([group_column] if group_column else [])
            missing = [c for c in expected if c not in found]
            if missing:
                raise ValueError(f"{csv_path.name}: missing column(s) {missing}; expected {expected}, found {found}")
            raw = []
            for values in reader:
                if max_rows is not None and len(raw) >= max_rows:
                    raise ValueError(f"{csv_path.name}: more than {max_rows:,} data rows, the limit for uploads")
                raw.append(values)
    except UnicodeDecodeError:
        raise ValueError(f"{csv_path.name}: not a UTF-8 text file") from None
    except csv.Error as e:
        raise ValueError(f"{csv_path.name}: not a valid CSV ({e})") from None

    examples, rejected = [], []
    checked: dict[Path, str | None] = {}  # image -> error, each image decoded once
    resolved_root = root.resolve()
    for i, values in enumerate(raw):
        row = i + 2
        image = (values.get(image_column) or "").strip()
        parts = [(values.get(c) or "").strip() for c in text_columns]
        text = join_texts([p for p in parts if p and not is_blank(p)])
        label = (values.get(label_column) or "").strip()
        if not image:
            rejected.append((row, f"empty {image_column}"))
            continue
        if not text or is_blank(text):  # zero-width characters only: nothing a reader sees
            rejected.append((row, f"empty {' and '.join(text_columns)}"))
            continue
        answers = {}
        if several:  # an empty cell (or a missing-value mark) leaves that task out for this row
            answers = {c: (values.get(c) or "").strip() for c in label_columns}
            answers = {c: ("" if v.lower() in MISSING_LABELS else v) for c, v in answers.items()}
            if not any(answers.values()):
                rejected.append((row, f"no label in any of {', '.join(label_columns)}"))
                continue
            label = answers[label_column]
        elif not label:
            rejected.append((row, f"empty {label_column}"))
            continue
        elif label.lower() in MISSING_LABELS:
            rejected.append((row, f"{label_column} {label!r} marks a missing value, not a class"))
            continue
        if max_text_chars is not None and len(text) > max_text_chars:
            rejected.append((row, f"{text_column} has {len(text):,} characters, over the limit of {max_text_chars:,}"))
            continue
        if confine and (Path(image).is_absolute() or ".." in Path(image).parts):
            rejected.append((row, f"image path {image!r} must be relative, without '..'"))
            continue
        path = (root / image).resolve()
        if confine and not path.is_relative_to(resolved_root):
            rejected.append((row, f"image path {image!r} leaves the upload folder"))
            continue
        if path not in checked:
            checked[path] = _image_error(path, image, max_pixels) if check_images else None
        if checked[path]:
            rejected.append((row, checked[path]))
            continue
        group = (values.get(group_column) or "").strip() if group_column else ""
        examples.append(Example(row, path, text, label, group, answers))

    counts = Counter(e.label for e in examples if e.label)
    class_counts = dict(sorted(counts.items()))
    dataset = Dataset(csv_path, examples, rejected, sorted(counts), class_counts, separator=separator)
    if counts and min(counts.values()) * IMBALANCE_RATIO <= max(counts.values()):
        small = min(counts, key=counts.get)
        large = max(counts, key=counts.get)
        dataset.warnings.append(
            f"classes are imbalanced: {large!r} has {counts[large]} rows, {small!r} only {counts[small]}"
            " (consider class weights)"
        )
    dataset.group_column = group_column or ""
    if len(text_columns) > 1:
        dataset.text_columns = text_columns
    if several:
        dataset.tasks = label_columns
        for task in label_columns:
            task_counts = Counter(e.labels[task] for e in examples if e.labels[task])
            dataset.task_counts[task] = dict(sorted(task_counts.items()))
            dataset.empty_labels[task] = sum(1 for e in examples if not e.labels[task])
    return dataset


def count_truncated(dataset: Dataset, tokenizer, max_tokens: int) -> int:
    """How many rows' texts are longer than ``max_tokens`` tokens (the model reads no further);
    kept on ``dataset`` for its report."""
    texts = sorted({e.text for e in dataset.examples})
    long = set()
    for start in range(0, len(texts), 1024):
        chunk = texts[start : start + 1024]
        lengths = [len(ids) for ids in tokenizer(chunk, add_special_tokens=True)["input_ids"]]
        long.update(t for t, n in zip(chunk, lengths) if n > max_tokens)
    dataset.truncated_rows = sum(1 for e in dataset.examples if e.text in long)
    dataset.max_tokens = max_tokens
    return dataset.truncated_rows


def _image_error(path: Path, name: str, max_pixels: int = MAX_PIXELS) -> str | None:
    if not path.exists():
        return f"image not found: {name}"
    try:
        decode_image(path, name=name, max_pixels=max_pixels)
    except ValueError as e:
        return str(e)
    return None


def check_trainable(dataset: Dataset) -> None:
    """Raise a ValueError when the dataset cannot train a classifier."""
    if not dataset.examples:
        reasons = "; ".join(f"row {r}: {m}" for r, m in dataset.rejected[:3])
        raise ValueError(f"{dataset.csv_path.name}: no valid rows" + (f" ({reasons} ...)" if reasons else ""))
    for task, counts in dataset.task_counts.items():
        if len(counts) < 2:
            raise ValueError(
                f"{dataset.csv_path.name}: the label column {task!r} has {len(counts)} distinct value(s)"
                f" ({', '.join(counts)}); a task needs at least 2"
            )
    if len(dataset.labels) < 2:
        raise ValueError(
            f"{dataset.csv_path.name}: a classifier needs at least 2 classes, found {len(dataset.labels)}"
            f" ({', '.join(dataset.labels)})"
        )


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
NAME_HINTS = {
    "image": ("image", "image_path", "img", "path", "file", "filename", "file_name", "picture", "photo"),
    "text": ("text", "question", "caption", "prompt", "description", "sentence", "query"),
    "label": ("label", "answer", "class", "category", "target", "y", "tag"),
}
MAX_LABEL_SHARE = 0.5  # a label column repeats: at most this share of its rows are distinct values


@dataclass
class ColumnGuess:
    image: str | None
    text: str | None
    label: str | None
    reasons: list[str]  # why each column was picked, or what is unsure (for the user to check)
    unsure: bool  # True when a role could not be told from the content


def guess_columns(header: list[str], rows: list[list[str]], image_root: str | os.PathLike | None = None) -> ColumnGuess:
    """Which column holds the image paths, the text and the label, from the values themselves:
    image = the column whose values are image file names (or files under ``image_root``),
    text = the remaining column with the most words per value, label = the remaining column
    with few distinct values (the fewest). Column names only break ties and fill in for a CSV
    without rows. ``unsure`` says when a role had no convincing column."""
    columns = [c for c in header if c]
    values = {c: [r[i].strip() for r in rows if i < len(r) and r[i].strip()] for i, c in enumerate(header) if c}
    root = Path(image_root) if image_root is not None else None
    reasons: list[str] = []

    def named(column: str, role: str) -> bool:
        return column.strip().lower() in NAME_HINTS[role]

    def image_share(column: str) -> float:
        vals = values[column]
        if not vals:
            return 0.0
        hits = sum(v.lower().endswith(IMAGE_EXTENSIONS) or (root is not None and (root / v).is_file()) for v in vals)
        return hits / len(vals)

    if not rows:  # names only
        picked: dict[str, str | None] = {}
        for role in ("image", "text", "label"):
            free = [c for c in columns if c not in picked.values()]
            picked[role] = next((c for c in free if named(c, role)), None)
        return ColumnGuess(picked["image"], picked["text"], picked["label"], ["guessed from the column names"], True)

    scored = sorted(columns, key=lambda c: (image_share(c), named(c, "image")), reverse=True)
    image = (
        scored[0] if scored and image_share(scored[0]) >= 0.5 else next((c for c in columns if named(c, "image")), None)
    )
    unsure = False
    if image is not None and image_share(image) >= 0.5:
        reasons.append(f"image: {image!r} ({image_share(image):.0%} of its values are image files)")
    else:
        unsure = True
        reasons.append("image: no column of image file names found; pick the image column")

    rest = [c for c in columns if c != image]

    def distinct(column: str) -> int:
        return len(set(values[column]))

    def words(column: str) -> float:
        vals = values[column]
        return sum(len(v.split()) for v in vals) / len(vals) if vals else 0.0

    label_candidates = [c for c in rest if values[c] and 2 <= distinct(c) <= max(2, MAX_LABEL_SHARE * len(values[c]))]
    label = min(label_candidates, key=lambda c: (not named(c, "label"), distinct(c), words(c)), default=None)
    if label is None:
        label = next((c for c in rest if named(c, "label")), None)
        unsure = True
        reasons.append("label: no column with few distinct values found; pick the label column")
    else:
        reasons.append(f"label: {label!r} ({distinct(label)} distinct values in {len(values[label])} rows)")

    text_candidates = [c for c in rest if c != label and values[c]]
    text = max(text_candidates, key=lambda c: (words(c), named(c, "text")), default=None)
    if text is None:
        unsure = True
        reasons.append("text: no text column left; pick the text column")
    else:
        reasons.append(f"text: {text!r} ({words(text):.1f} words per value)")
    return ColumnGuess(image, text, label, reasons, unsure)


def missing_images_hint(dataset: Dataset, zip_uploaded: bool) -> str | None:
    """A one-line hint when most rows were rejected because their images are not there."""
    prefix = "image not found: "
    missing = [(row, reason[len(prefix) :]) for row, reason in dataset.rejected if reason.startswith(prefix)]
    if not missing or len(missing) < len(dataset.rejected) / 2:
        return None
    rows = named_rows(missing)
    if not zip_uploaded:
        return (
            f"{len(missing)} rows name images that were not uploaded ({rows}): add the zip of the images "
            "(paths in the CSV relative to the zip's root)."
        )
    return (
        f"{len(missing)} rows name images that are not in the zip ({rows}): check the image column and the"
        " paths inside the zip."
    )
