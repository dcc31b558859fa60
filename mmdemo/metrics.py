"""Classification metrics: pure functions on label lists."""

from __future__ import annotations


def classification_report(y_true: list[str], y_pred: list[str], labels: list[str]) -> dict:
    """accuracy, macro F1, per-class precision / recall / F1 / support, and the confusion
    matrix (rows: true label, columns: predicted label, both in ``labels`` order)."""
    index = {label: i for i, label in enumerate(labels)}
    confusion = [[0] * len(labels) for _ in labels]
    for t, p in zip(y_true, y_pred):
        confusion[index[t]][index[p]] += 1
    per_class = {}
    for i, label in enumerate(labels):
        tp = confusion[i][i]
        predicted = sum(row[i] for row in confusion)
        support = sum(confusion[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    present = [label for label in labels if per_class[label]["support"] > 0]
    n = len(y_true)
    return {
        "n": n,
        "accuracy": sum(t == p for t, p in zip(y_true, y_pred)) / n if n else 0.0,
        "macro_f1": sum(per_class[label]["f1"] for label in present) / len(present) if present else 0.0,
        "per_class": per_class,
        "confusion": {"labels": list(labels), "matrix": confusion},
    }


def expected_calibration_error(confidences: list[float], correct: list[bool], bins: int = 15) -> float:
    """ECE with ``bins`` equal-width confidence bins: the mean over samples of
    |accuracy - mean confidence| of the sample's bin (top-label confidence)."""
    return reliability(confidences, correct, bins)["ece"]


def reliability_rows(table: dict | None) -> list[dict]:
    """``reliability``'s per-bin lists as rows (non-empty bins only): low, high, n, confidence,
    accuracy (what model cards print)."""
    if not table:
        return []
    n = table["bins"]
    return [
        {
            "low": b / n,
            "high": (b + 1) / n,
            "n": c,
            "confidence": table["confidence"][b],
            "accuracy": table["accuracy"][b],
        }
        for b, c in enumerate(table["count"])
        if c
    ]


def reliability(confidences: list[float], correct: list[bool], bins: int = 15) -> dict:
    """Per bin (equal width over [0, 1]): count, mean confidence and accuracy; and the ECE."""
    counts, conf_sums, hit_sums = [0] * bins, [0.0] * bins, [0.0] * bins
    for c, ok in zip(confidences, correct):
        b = min(int(float(c) * bins), bins - 1)
        counts[b] += 1
        conf_sums[b] += float(c)
        hit_sums[b] += float(bool(ok))
    n = sum(counts)
    ece = sum(abs(hit_sums[b] - conf_sums[b]) for b in range(bins)) / n if n else 0.0
    return {
        "bins": bins,
        "count": counts,
        "confidence": [conf_sums[b] / counts[b] if counts[b] else None for b in range(bins)],
        "accuracy": [hit_sums[b] / counts[b] if counts[b] else None for b in range(bins)],
        "ece": ece,
    }
