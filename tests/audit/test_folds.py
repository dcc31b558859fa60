"""Folds of whole sources: no image (nor a copy of it, nor a group) on both sides of a fold."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mmdemo.audit.folds import assign_folds, sources
from mmdemo.datasets.csv_table import Example


def _examples(images: int, questions: int = 3, group=lambda i: "") -> list[Example]:
    return [
        Example(2 + i * questions + q, Path(f"/data/{i}.png"), f"question {q}", "a", group(i))
        for i in range(images)
        for q in range(questions)
    ]


def test_the_rows_of_one_image_fall_in_one_fold_and_folds_are_balanced():
    examples = _examples(50)
    folds = assign_folds(sources(examples), 5, seed=0)
    by_image = {}
    for e, f in zip(examples, folds):
        by_image.setdefault(e.image, set()).add(int(f))
    assert all(len(f) == 1 for f in by_image.values())
    assert sorted(Counter(folds.tolist()).values()) == [30] * 5  # 10 images of 3 rows in each


def test_identical_copies_and_groups_stay_with_each_other():
    examples = _examples(40, group=lambda i: "patient-7" if i in (3, 9, 27) else "")
    copies = {Path("/data/5.png"): Path("/data/30.png"), Path("/data/30.png"): Path("/data/5.png")}
    folds = assign_folds(sources(examples, copies), 4, seed=1)
    fold_of = {e.image: int(f) for e, f in zip(examples, folds)}
    assert fold_of[Path("/data/5.png")] == fold_of[Path("/data/30.png")]
    assert fold_of[Path("/data/3.png")] == fold_of[Path("/data/9.png")] == fold_of[Path("/data/27.png")]
    assert len(set(fold_of.values())) == 4  # every fold is used


def test_the_seed_changes_the_folds_and_the_same_seed_repeats_them():
    keys = sources(_examples(30))
    assert np.array_equal(assign_folds(keys, 3, 0), assign_folds(keys, 3, 0))
    assert not np.array_equal(assign_folds(keys, 3, 0), assign_folds(keys, 3, 1))


def test_fewer_sources_than_folds_is_a_clear_error():
    with pytest.raises(ValueError, match="3 distinct images .* at least 5"):
        assign_folds(sources(_examples(3)), 5)
