"""Confident learning (Northcutt, Jiang and Chuang, "Confident Learning: Estimating Uncertainty
in Dataset Labels", JAIR 2021) on out-of-fold predicted probabilities: pure NumPy, no model.

For each class j the threshold t_j is the mean probability of j over the rows labelled j (its
average self-confidence). A row "confidently belongs" to every class whose probability reaches
that class's threshold, and is counted under the most probable of them; a row labelled i and
counted under j != i is a label issue, with j as the suggested label. Classes compete only
within one question: ``allowed`` masks the answers a row's question can take, so "odd" never
competes with "7". Written here because cleanlab, which implements it, is AGPL-3.0 licensed.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class LabelIssues(NamedTuple):
    issue: np.ndarray  # (N,) bool: the given label is likely wrong
    suggested: np.ndarray  # (N,) int: the class the row confidently belongs to (its given one when none)
    self_confidence: np.ndarray  # (N,) the probability of the given label: lower is a surer issue
    thresholds: np.ndarray  # (K,) t_j; 1.0 for a class no row is labelled with


def thresholds(probs: np.ndarray, given: np.ndarray) -> np.ndarray:
    """t_j = mean of probs[:, j] over the rows labelled j (1.0 for a class without rows, so
    nothing is counted under it)."""
    k = probs.shape[1]
    out = np.ones(k)
    for j in range(k):
        rows = given == j
        if rows.any():
            out[j] = probs[rows, j].mean()
    return out


def _counted(probs: np.ndarray, given: np.ndarray, allowed: np.ndarray | None):
    """Each row's most probable confident class (``has``: whether it has one) and the thresholds."""
    probs = np.asarray(probs, dtype=np.float64)
    given = np.asarray(given)
    if probs.ndim != 2 or len(given) != len(probs):
        raise ValueError(f"probs must be (N, K) with N = len(given), got {probs.shape} and {len(given)}")
    allowed = np.ones(probs.shape, bool) if allowed is None else np.asarray(allowed, bool)
    t = thresholds(probs, given)
    confident = (probs >= t[None, :]) & allowed  # (N, K)
    return confident.any(1), np.where(confident, probs, -1.0).argmax(1), t


def find_label_issues(probs: np.ndarray, given: np.ndarray, allowed: np.ndarray | None = None) -> LabelIssues:
    """``probs`` (N, K) out-of-fold probabilities, each row summing to 1 over its allowed
    classes; ``given`` (N,) the given class indices; ``allowed`` (N, K) bool, the classes each
    row's question can take (default: all)."""
    has, counted, t = _counted(probs, given, allowed)
    given = np.asarray(given)
    self_confidence = np.asarray(probs, dtype=np.float64)[np.arange(len(given)), given]
    return LabelIssues(has & (counted != given), np.where(has, counted, given), self_confidence, t)


def confident_joint(probs: np.ndarray, given: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
    """C[i, j]: the rows labelled i that confidently belong to j (its off-diagonal: the issues)."""
    has, counted, _ = _counted(probs, given, allowed)
    k = np.asarray(probs).shape[1]
    joint = np.zeros((k, k), dtype=np.int64)
    np.add.at(joint, (np.asarray(given)[has], counted[has]), 1)
    return joint
