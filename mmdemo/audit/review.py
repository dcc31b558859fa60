"""The review of an audit's findings: a decision per spreadsheet row (keep it as it is, relabel
it, exclude it), applied to the data a training run reads, and what the training record and
the model card say about it. The upload itself is never changed: the decisions are applied to
the rows read from it, so the row numbers stay those of the user's CSV.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

from ..datasets.csv_table import MISSING_LABELS, Dataset

ACTIONS = ("keep", "relabel", "exclude")
MAX_LABEL_CHARS = 100
NAMED = 8  # rows named in the record's sentence; the full lists are in the record


def check_decision(action: str, label: str | None = None) -> dict:
    """A decision as stored: ``{"action": ..., "label": ...}`` (label only for relabel); a
    ValueError names what is wrong."""
    if action not in ACTIONS:
        raise ValueError(f"unknown review action {str(action)[:20]!r}: use keep, relabel or exclude")
    if action != "relabel":
        return {"action": action}
    label = (label or "").strip()
    if not label:
        raise ValueError("type the new label (or pick a suggested one) before relabelling")
    if len(label) > MAX_LABEL_CHARS:
        raise ValueError(f"the new label has {len(label)} characters, over the limit of {MAX_LABEL_CHARS}")
    if label.lower() in MISSING_LABELS:
        raise ValueError(f"{label!r} marks a missing value, not a label")
    return {"action": "relabel", "label": label}


def apply_review(dataset: Dataset, decisions: dict[str, dict]) -> Dataset:
    """``dataset`` with the decisions applied: excluded rows left out, relabelled rows with their
    new label (the classes follow). ``decisions`` maps spreadsheet rows (as strings, the JSON
    keys) to ``check_decision`` values; a row the data does not have is a ValueError."""
    wanted = {int(row): decision for row, decision in decisions.items()}
    rows = {e.row for e in dataset.examples}
    missing = sorted(set(wanted) - rows)
    if missing:
        named = ", ".join(map(str, missing[:NAMED]))
        raise ValueError(
            f"{dataset.csv_path.name}: the review names row(s) {named} that the data does not have;"
            " audit the data again"
        )
    examples = []
    for e in dataset.examples:
        decision = wanted.get(e.row, {"action": "keep"})
        if decision["action"] == "exclude":
            continue
        examples.append(replace(e, label=decision["label"]) if decision["action"] == "relabel" else e)
    counts: dict[str, int] = {}
    for e in examples:
        counts[e.label] = counts.get(e.label, 0) + 1
    return replace(dataset, examples=examples, labels=sorted(counts), class_counts=dict(sorted(counts.items())))


def review_record(decisions: dict[str, dict], findings: list[dict], audit: dict | None = None) -> dict:
    """What the training record keeps of a review: the rows excluded and relabelled (with their
    image and labels), the flagged rows kept, and the audit's counts."""
    by_row: dict[int, dict] = {}
    for f in findings:
        by_row.setdefault(int(f["row"]), f)
    excluded, relabelled, kept = [], [], []
    for row in sorted(int(r) for r in decisions):
        decision = decisions[str(row)]
        finding = by_row.get(row, {})
        entry = {"row": row, "image": finding.get("image", ""), "label": finding.get("label", "")}
        if decision["action"] == "exclude":
            excluded.append(entry)
        elif decision["action"] == "relabel":
            relabelled.append({**entry, "new_label": decision["label"]})
        else:
            kept.append(row)
    flagged = len(by_row)
    record = {"excluded": excluded, "relabelled": relabelled, "kept": kept, "flagged_rows": flagged}
    if audit:
        record["audit"] = audit
    record["summary"] = review_words(record)
    return record


def review_words(record: dict) -> str:
    """One sentence: 'reviewed after a data audit: 1 row excluded (row 5), 1 row relabelled
    (row 7: dark -> bright), 2 flagged rows kept as they were'."""

    def rows(entries: list[dict], text) -> str:
        named = ", ".join(text(e) for e in entries[:NAMED])
        more = f" and {len(entries) - NAMED} more" if len(entries) > NAMED else ""
        return f"{named}{more}"

    def plural(n: int, one: str) -> str:
        return f"{n} {one}{'' if n == 1 else 's'}"

    parts = []
    if record["excluded"]:
        parts.append(f"{plural(len(record['excluded']), 'row')} excluded ({rows(record['excluded'], _row)})")
    if record["relabelled"]:
        named = rows(record["relabelled"], lambda e: f"{_row(e)}: {e['label']} -> {e['new_label']}")
        parts.append(f"{plural(len(record['relabelled']), 'row')} relabelled ({named})")
    undecided = record["flagged_rows"] - len(record["excluded"]) - len(record["relabelled"])
    if undecided > 0:
        parts.append(f"{plural(undecided, 'flagged row')} kept as {'it was' if undecided == 1 else 'they were'}")
    return "reviewed after a data audit: " + ("; ".join(parts) or "no row was flagged")


def _row(entry: dict) -> str:
    return f"row {entry['row']}"


DECISION_COLUMNS = ("row", "image", "text", "label", "issue", "score", "suggested_label", "decision", "new_label")


def write_decisions(findings: list[dict], decisions: dict[str, dict], path: Path) -> Path:
    """The review as a CSV: every finding with the decision on its row ('keep' when none was made)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(DECISION_COLUMNS)
        for x in findings:
            decision = decisions.get(str(x["row"]), {"action": "keep"})
            writer.writerow(
                [x["row"], x["image"], x["text"], x["label"], x["issue"], f"{x['score']:.4f}",
                 x["suggested_label"], decision["action"], decision.get("label", "")]
            )  # fmt: skip
    return path
