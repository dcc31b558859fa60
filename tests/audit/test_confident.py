"""Confident learning on hand-made probabilities: thresholds, the confident joint, issues and
suggestions, and answers of different questions never competing."""

import numpy as np
import pytest

from mmdemo.audit.confident import confident_joint, find_label_issues, thresholds


def test_thresholds_are_the_mean_self_confidence_of_each_class():
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.4, 0.6]])
    given = np.array([0, 0, 1, 1])
    assert thresholds(probs, given) == pytest.approx([0.8, 0.7])


def test_a_class_no_row_is_labelled_with_gets_threshold_one():
    probs = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1]])
    assert thresholds(probs, np.array([0, 0]))[1:] == pytest.approx([1.0, 1.0])


def test_a_row_confidently_in_another_class_is_an_issue_with_that_suggestion():
    # class 0: rows 0-2 (row 2 looks like class 1); class 1: rows 3-5
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.1, 0.9], [0.15, 0.85], [0.1, 0.9], [0.3, 0.7]])
    given = np.array([0, 0, 0, 1, 1, 1])
    # t0 = (0.95 + 0.9 + 0.1) / 3 = 0.65, t1 = (0.85 + 0.9 + 0.7) / 3 = 0.8167
    found = find_label_issues(probs, given)
    assert found.thresholds == pytest.approx([0.65, 2.45 / 3])
    assert found.issue.tolist() == [False, False, True, False, False, False]
    assert found.suggested[2] == 1
    assert found.self_confidence == pytest.approx(probs[np.arange(6), given])
    # row 5 (0.3, 0.7): under both thresholds, confident in no class, so not counted either way
    assert confident_joint(probs, given).tolist() == [[2, 1], [0, 2]]


def test_a_low_probability_below_every_threshold_is_not_an_issue():
    # the given class is unlikely, but no other class reaches its threshold: not confident enough
    probs = np.array([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.1, 0.9, 0.0], [0.45, 0.2, 0.35]])
    given = np.array([0, 0, 1, 1, 1])
    assert not find_label_issues(probs, given).issue.any()


def test_answers_of_another_question_never_compete():
    # classes 0/1 answer question A, 2/3 answer question B; row 4 (question A) puts its mass on class 2
    probs = np.array([[0.9, 0.1, 0, 0], [0.8, 0.2, 0, 0], [0, 0, 0.9, 0.1], [0, 0, 0.2, 0.8], [0.05, 0, 0.95, 0]])
    given = np.array([0, 0, 2, 3, 0])
    allowed = np.array([[1, 1, 0, 0]] * 2 + [[0, 0, 1, 1]] * 2 + [[1, 1, 0, 0]], bool)
    unmasked = find_label_issues(probs, given)
    assert unmasked.issue[4] and unmasked.suggested[4] == 2  # 0.95 reaches t2 = 0.9
    masked = find_label_issues(probs, given, allowed)
    assert not masked.issue[4] and masked.suggested[4] == 0


def test_shapes_that_do_not_match_are_refused():
    with pytest.raises(ValueError, match="probs must be"):
        find_label_issues(np.ones((3, 2)) / 2, np.array([0, 1]))
