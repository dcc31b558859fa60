"""``python -m mmdemo audit`` through a subprocess on a tiny fixture (the tiny offline
checkpoint's encoders): audit.csv, the summary and its last JSON line, and clear errors."""

import csv
import json
import subprocess
import sys

import pytest

from tests.audit.scans import write_scans, wrong_rows

COLUMNS = ["row", "image", "text", "label", "issue", "score", "suggested_label", "duplicate_of"]


def _run(*args):
    return subprocess.run([sys.executable, "-m", "mmdemo", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a CLI process that loads torch and trains 20 small heads
def test_audit_writes_its_findings_and_ends_with_the_counts(tmp_path, tiny_checkpoint):
    data = write_scans(tmp_path / "data", n=30, wrong=(5, 12), copies=(3,))
    out = tmp_path / "audit.csv"
    result = _run("audit", "--csv", str(data), "--out", str(out), "--checkpoint", str(tiny_checkpoint))
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(counts) == {"duplicate", "label", "leak", "mismatch", "near_duplicate", "outlier"}
    assert counts["label"] == 2 and counts["duplicate"] == 2 and counts["leak"] == 0
    assert "encode: features of 31 images" in result.stderr and "label folds: 20/20" in result.stderr
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    assert {int(r["row"]) for r in rows if r["issue"] == "label"} == wrong_rows(data, (5, 12))
    assert {(r["image"], r["duplicate_of"]) for r in rows if r["issue"] == "duplicate"} == {
        ("img/3.png", "copies/3.png"),
        ("copies/3.png", "img/3.png"),
    }
    assert [(r["issue"], float(r["score"])) for r in rows] == sorted((r["issue"], float(r["score"])) for r in rows)


@pytest.mark.slow  # three CLI processes
def test_bad_input_gets_one_line_naming_the_problem(tmp_path, tiny_checkpoint):
    data = write_scans(tmp_path / "data", n=8)
    out = tmp_path / "audit.csv"
    result = _run("audit", "--csv", str(data), "--out", str(out), "--label-column", "answer")
    assert result.returncode == 2 and "missing column(s) ['answer']" in result.stderr
    assert "Traceback" not in result.stderr
    out.write_text("kept")
    result = _run("audit", "--csv", str(data), "--out", str(out))
    assert result.returncode == 2 and "already exists (pass --overwrite" in result.stderr
    assert out.read_text() == "kept"
    few = write_scans(tmp_path / "few", n=3)
    result = _run("audit", "--csv", str(few), "--out", str(tmp_path / "a.csv"), "--checkpoint", str(tiny_checkpoint))
    assert result.returncode == 2 and "3 distinct images; the audit needs at least 5" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
