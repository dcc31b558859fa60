"""The data audit as a visitor's job in the app: it finds the wrong labels of an upload, the
visitor's decisions are kept with it (and only theirs), and training on the reviewed data
leaves the excluded rows out, relabels the others, and lists both in the training record and
the model card, while the upload itself is unchanged."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from mmdemo.audit.review import apply_review, check_decision, review_record
from mmdemo.datasets.csv_table import read_csv
from mmdemo.model.card import app_model_card

from ..audit.scans import write_scans, wrong_rows
from ..browser import make_app

WRONG = (4, 11, 26)
TOKEN, OTHER_TOKEN = "a" * 43, "b" * 43


@pytest.fixture(scope="module")
def upload(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scans")
    csv_path = write_scans(folder, n=40, wrong=WRONG)
    archive = shutil.make_archive(str(folder / "images"), "zip", root_dir=folder, base_dir="img")
    return csv_path, archive


@pytest.fixture(scope="module")
def audited(tmp_path_factory, upload):
    app = make_app(tmp_path_factory.mktemp("audit-app"))
    owner = app.owner(TOKEN)
    csv_path, archive = upload
    status = app.start_audit(owner, str(csv_path), archive, ("image", "text", "label"), "sort-of-clevr")
    assert status["kind"] == "audit"
    app.jobs.wait(owner, 300)
    yield app, owner
    app.close()


def test_the_audit_job_finds_the_wrong_labels_with_their_pictures(audited, upload):
    app, owner = audited
    review = app.audit_review(owner)
    assert review["state"] == "done", review["message"]
    labels = [f for f in review["findings"] if f["issue"] == "label"]
    assert {f["row"] for f in labels} == wrong_rows(upload[0], WRONG)
    assert all(f["suggested_label"] in ("bright", "dark") and f["suggested_label"] != f["label"] for f in labels)
    pictures = Path(review["folder"]) / ".review"
    assert all(f["thumbnail"] and (pictures / f["thumbnail"]).is_file() for f in labels)
    status = app.jobs.status(owner)
    assert status["state"] == "done" and "3 label issues" in status["message"]
    assert app.audit_review(app.owner(OTHER_TOKEN)) is None  # another visitor has no audit


def test_decisions_are_checked_kept_and_only_the_visitors(audited):
    app, owner = audited
    rows = sorted(f["row"] for f in app.audit_review(owner)["findings"] if f["issue"] == "label")
    with pytest.raises(ValueError, match="not among the audit's findings"):
        app.decide(owner, [3], "exclude")  # a row the audit did not flag
    with pytest.raises(ValueError, match="type the new label"):
        app.decide(owner, [rows[0]], "relabel", "  ")
    with pytest.raises(ValueError, match="no finished audit of yours"):
        app.decide(app.owner(OTHER_TOKEN), [rows[0]], "exclude")
    review = app.decide(owner, [rows[0]], "exclude")
    review = app.decide(owner, [rows[1]], "relabel", "bright" if _label(review, rows[1]) == "dark" else "dark")
    review = app.decide(owner, [rows[2]], "keep")
    assert set(review["decisions"]) == {str(r) for r in rows}
    with open(app.review_csv(owner), newline="") as f:
        written = {int(r["row"]): r["decision"] for r in csv.DictReader(f) if r["issue"] == "label"}
    assert written == {rows[0]: "exclude", rows[1]: "relabel", rows[2]: "keep"}


def _label(review, row):
    return next(f["label"] for f in review["findings"] if f["row"] == row)


def test_training_on_the_reviewed_data_applies_and_records_the_decisions(audited, upload):
    app, owner = audited
    csv_path, archive = upload
    before = csv_path.read_bytes()
    review = app.audit_review(owner)
    excluded = next(int(r) for r, d in review["decisions"].items() if d["action"] == "exclude")
    relabelled = next(int(r) for r, d in review["decisions"].items() if d["action"] == "relabel")
    app.start_reviewed_job(
        owner, str(csv_path), archive, ("image", "text", "label"), {"epochs": 1}, "reviewed", None, False, 0.2
    )
    status = app.jobs.wait(owner, 300)
    assert status["state"] == "done", status["message"]
    config = json.loads((app.registry.path("reviewed", owner) / "config.json").read_text())
    record = config["training"]["review"]
    assert [e["row"] for e in record["excluded"]] == [excluded]
    assert [e["row"] for e in record["relabelled"]] == [relabelled]
    assert f"1 row excluded (row {excluded})" in config["training"]["data"]
    assert config["training"]["data"].startswith("data.csv: 79 rows")  # 40 scans x 2 questions, 1 row left out
    card = app_model_card("reviewed", config)
    assert f"row {excluded}" in card and f"row {relabelled}:" in card
    assert csv_path.read_bytes() == before  # the upload is unchanged


def test_training_on_the_reviewed_data_refuses_another_csv(audited, upload, tmp_path):
    app, owner = audited
    other = tmp_path / "other.csv"
    other.write_text(upload[0].read_text().replace("bright", "light", 1))
    with pytest.raises(ValueError, match="not the one that was audited"):
        app.start_reviewed_job(
            owner, str(other), upload[1], ("image", "text", "label"), {"epochs": 1}, "x", None, False, 0.2
        )
    with pytest.raises(ValueError, match="audit the data first"):
        app.start_reviewed_job(
            app.owner(OTHER_TOKEN), str(upload[0]), upload[1], ("image", "text", "label"), None, "x", None, False, 0.2
        )


def test_apply_review_leaves_out_relabels_and_names_unknown_rows(tmp_path):
    dataset = read_csv(write_scans(tmp_path, n=6))
    reviewed = apply_review(dataset, {"2": check_decision("exclude"), "3": check_decision("relabel", "grey")})
    assert [e.row for e in reviewed.examples] == [e.row for e in dataset.examples if e.row != 2]
    assert next(e.label for e in reviewed.examples if e.row == 3) == "grey"
    assert "grey" in reviewed.labels and sum(reviewed.class_counts.values()) == len(dataset.examples) - 1
    assert len(dataset.examples) == 12  # the data read is not changed
    with pytest.raises(ValueError, match="row.s. 99 that the data does not have"):
        apply_review(dataset, {"99": check_decision("exclude")})
    with pytest.raises(ValueError, match="unknown review action"):
        check_decision("delete")


def test_the_review_record_names_rows_and_counts_the_kept_ones():
    findings = [
        {"row": 5, "image": "a.png", "label": "dark"},
        {"row": 7, "image": "b.png", "label": "dark"},
        {"row": 9, "image": "c.png", "label": "bright"},
    ]
    record = review_record({"5": {"action": "exclude"}, "7": {"action": "relabel", "label": "bright"}}, findings)
    assert record["summary"] == (
        "reviewed after a data audit: 1 row excluded (row 5); 1 row relabelled (row 7: dark -> bright);"
        " 1 flagged row kept as it was"
    )
    assert record["excluded"] == [{"row": 5, "image": "a.png", "label": "dark"}]
