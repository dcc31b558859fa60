"""run_audit end to end on a tiny fixture (the tiny offline checkpoint's encoders): the wrong
labels found with their right answer, copies named, leaks into a test CSV, audit.csv's columns
and order, and Stop between phases."""

import csv
import shutil

import pytest

from mmdemo.audit.core import COLUMNS, AuditSettings, run_audit, sort_findings, write_audit_csv
from mmdemo.datasets.csv_table import read_csv
from mmdemo.training.settings import Stopped

from .scans import write_scans, wrong_rows

WRONG = (4, 11, 26)


@pytest.fixture(scope="module")
def audited(tmp_path_factory, tiny_checkpoint):
    folder = tmp_path_factory.mktemp("scans")
    path = write_scans(folder, n=40, wrong=WRONG, copies=(6,))
    test_folder = tmp_path_factory.mktemp("test-scans")
    test_csv = write_scans(test_folder, n=4, seed=1)  # other noise: not the training scans ...
    shutil.copyfile(folder / "img" / "13.png", test_folder / "img" / "leaked.png")  # ... this one is
    with open(test_csv, "a", newline="") as f:
        csv.writer(f).writerow(["img/leaked.png", "Is it bright or dark?", "dark"])
    dataset, test = read_csv(path), read_csv(test_csv)
    events = []
    result = run_audit(dataset, events.append, test=test, checkpoint=tiny_checkpoint, device="cpu")
    return path, result, events


def test_the_wrong_labels_are_found_with_the_right_answer_suggested(audited):
    path, result, _ = audited
    labels = [f for f in result.findings if f.issue == "label"]
    assert {f.row for f in labels} == wrong_rows(path, WRONG)
    for f in labels:
        assert f.suggested_label != f.label and f.suggested_label in ("bright", "dark")
        assert f.score < 0.5  # the given label's out-of-fold probability


def test_a_copy_and_its_original_name_each_other_and_a_leak_names_the_test_image(audited):
    _, result, _ = audited
    duplicates = {(f.image, f.duplicate_of) for f in result.findings if f.issue == "duplicate"}
    assert duplicates == {("img/6.png", "copies/6.png"), ("copies/6.png", "img/6.png")}
    leaks = [(f.image, f.duplicate_of) for f in result.findings if f.issue == "leak"]
    assert leaks == [("img/13.png", "img/leaked.png")]
    assert result.counts["duplicate"] == 2 and result.counts["leak"] == 1
    assert set(result.counts) == {"duplicate", "label", "leak", "mismatch", "near_duplicate", "outlier"}


def test_audit_csv_has_its_columns_and_is_sorted_by_issue_then_score(audited, tmp_path):
    _, result, _ = audited
    out = tmp_path / "audit.csv"
    write_audit_csv(list(reversed(result.findings)), out)
    with open(out, newline="") as f:
        reader = csv.reader(f)
        header, rows = next(reader), list(reader)
    assert tuple(header) == COLUMNS
    keys = [(r[4], float(r[5])) for r in rows]
    assert keys == sorted(keys) and len(rows) == len(result.findings)
    assert all(int(r[0]) >= 2 for r in rows)  # spreadsheet rows: the header is row 1


def test_findings_sort_by_issue_then_surest_first():
    from mmdemo.audit.core import Finding

    found = [Finding(5, "b", "t", "x", "label", 0.3), Finding(2, "a", "t", "x", "duplicate", 0.0),
             Finding(3, "c", "t", "x", "label", 0.1)]  # fmt: skip
    assert [f.row for f in sort_findings(found)] == [2, 3, 5]


def test_progress_names_each_phase(audited):
    _, _, events = audited
    phases = [e["phase"] for e in events if e["stage"] == "audit"]
    assert phases == ["hash images", "encode", "labels", "images"]
    folds = [e for e in events if e["stage"] == "label folds"]
    assert (
        folds[-1]["done"]
        == folds[-1]["total"]
        == AuditSettings().folds * AuditSettings().rounds * AuditSettings().ensembles
    )


def test_stop_ends_the_audit_after_the_current_phase(tmp_path, tiny_checkpoint):
    dataset = read_csv(write_scans(tmp_path, n=10))
    events = []
    with pytest.raises(Stopped, match="after hash images"):
        run_audit(dataset, events.append, should_stop=lambda: True, checkpoint=tiny_checkpoint, device="cpu")
    assert [e.get("phase") for e in events if e["stage"] == "audit"] == ["hash images"]


def test_fewer_images_than_folds_is_a_clear_error(tmp_path, tiny_checkpoint):
    dataset = read_csv(write_scans(tmp_path, n=3))
    with pytest.raises(ValueError, match="3 distinct images; the audit needs at least 5"):
        run_audit(dataset, checkpoint=tiny_checkpoint, device="cpu")


def test_an_image_far_from_all_others_is_the_one_outlier(tmp_path):
    import torch

    from mmdemo.audit.core import _outliers
    from mmdemo.audit.duplicates import unit_rows

    torch.manual_seed(0)
    kinds = torch.randn(4, 32)
    features = kinds[torch.arange(40) % 4] + 0.2 * torch.randn(40, 32)  # four kinds of image ...
    features[17] = 2 * torch.randn(32)  # ... and one like none of them
    images = [tmp_path / f"{i}.png" for i in range(40)]
    found = _outliers(images, unit_rows(features), set(), AuditSettings())
    assert list(found) == [images[17]] and found[images[17]] >= AuditSettings().outlier_z
    assert _outliers(images, unit_rows(features), {images[17]}, AuditSettings()) == {}
