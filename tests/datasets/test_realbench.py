"""Real-data benchmark builders: real scans / photos, no image (or source photo) in both splits."""

import csv

from mmdemo.datasets.real import make_digits, make_photo_patches


def _rows(path):
    return list(csv.DictReader(open(path, newline="")))


def test_digits_benchmark_splits_by_scan_with_14_answers(tmp_path):
    out = make_digits(tmp_path / "digits")
    train, test = _rows(out["train"]), _rows(out["test"])
    assert len(train) + len(test) == 1797 * 3
    assert not {r["image"] for r in train} & {r["image"] for r in test}
    assert len({r["label"] for r in train}) == 14
    assert {r["text"] for r in train} == {"What digit is this?", "Is it even or odd?", "Is it greater than four?"}


def test_photo_patches_split_by_source_photo(tmp_path):
    out = make_photo_patches(tmp_path / "patches", per_photo=2, test_photos=3)
    train, test = _rows(out["train"]), _rows(out["test"])
    assert train and test
    assert not {r["source"] for r in train} & {r["source"] for r in test}
    assert {r["label"] for r in train + test} <= {
        "left", "right", "top", "bottom", "dark", "medium", "bright", "smooth", "textured"
    }  # fmt: skip
