"""``python -m mmdemo evaluate --report``: its accuracy is batch predict's accuracy on the same
CSV, its last line is one JSON object, and the report file is written."""

import csv
import json

from .test_cli import _run
from .test_evalset import _write_set


def test_evaluate_report_matches_batch_predict(tiny_checkpoint, tmp_path):
    csv_path = _write_set(tmp_path / "set", n=40)
    out = _run(
        "predict", "--checkpoint", str(tiny_checkpoint), "--csv", str(csv_path), "--out", str(tmp_path / "p.csv")
    )
    assert json.loads(out.stdout.strip().splitlines()[-1])["errors"] == 0
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    predict_accuracy = sum(r["prediction"] == r["label"] for r in rows) / len(rows)
    assert 0 < predict_accuracy < 1  # labels cycle over 3 classes: a figure that can differ

    result = _run(
        "evaluate", "--checkpoint", str(tiny_checkpoint), "--csv", str(csv_path), "--report", str(tmp_path / "r.html")
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["accuracy"] == predict_accuracy and summary["n"] == 40
    assert summary["report"] == str(tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert f"{100 * predict_accuracy:.1f} %" in html and "https://" not in html


def test_evaluate_needs_one_data_source(tiny_checkpoint, tmp_path):
    result = _run("evaluate", "--checkpoint", str(tiny_checkpoint), check=False)
    assert result.returncode == 2 and "needs --csv FILE" in result.stderr
    result = _run(
        "evaluate", "--checkpoint", str(tiny_checkpoint), "--csv", "x.csv", "--benchmark", "2", "--report", "r.html",
        check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "either --csv FILE or --benchmark N" in result.stderr


def test_evaluate_on_the_built_in_benchmark(tiny_checkpoint):
    result = _run("evaluate", "--checkpoint", str(tiny_checkpoint), "--benchmark", "1")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["n"] == 20 and set(summary["confusion"]["labels"]) >= {"cat", "dog", "bird", "circle"}
    assert summary["accuracy"] == 0  # the tiny model's labels are not Sort-of-CLEVR's answers
