"""``python -m mmdemo evaluate --report``: its accuracy is batch predict's accuracy on the same
CSV, its last line is one JSON object, and the report file is written."""

import csv
import json

import pytest

from ..evaluation.test_evalset import _write_set
from .test_cli import _run


@pytest.mark.slow  # two CLI processes
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


@pytest.mark.slow  # two CLI processes
def test_evaluate_needs_one_data_source(tiny_checkpoint, tmp_path):
    result = _run("evaluate", "--checkpoint", str(tiny_checkpoint), check=False)
    assert result.returncode == 2 and "needs --csv FILE" in result.stderr
    result = _run(
        "evaluate", "--checkpoint", str(tiny_checkpoint), "--csv", "x.csv", "--benchmark", "2", "--report", "r.html",
        check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "either --csv FILE or --benchmark N" in result.stderr


@pytest.mark.slow  # a CLI process that renders and evaluates a benchmark
def test_evaluate_on_the_built_in_benchmark(tiny_checkpoint):
    result = _run("evaluate", "--checkpoint", str(tiny_checkpoint), "--benchmark", "1")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["n"] == 20 and set(summary["confusion"]["labels"]) >= {"cat", "dog", "bird", "circle"}
    assert summary["accuracy"] == 0  # the tiny model's labels are not Sort-of-CLEVR's answers


@pytest.mark.slow  # three CLI processes
def test_evaluate_measures_faithfulness_of_both_methods_on_a_bounded_sample(tiny_checkpoint, tmp_path):
    csv_path = _write_set(tmp_path / "set", n=12)
    report = tmp_path / "r.html"
    result = _run("evaluate", "--checkpoint", str(tiny_checkpoint), "--csv", str(csv_path), "--faithfulness-rows", "3",
                  "--report", str(report))  # fmt: skip
    faithfulness = json.loads(result.stdout.strip().splitlines()[-1])["faithfulness"]
    assert faithfulness["rows"] == 3 and faithfulness["sampled_from"] == 12
    for method in ("raw", "gradient"):
        assert set(faithfulness[method]) == {
            "deletion_auc", "random_deletion_auc", "insertion_auc", "randomisation_rank_correlation"
        }  # fmt: skip
        assert f"faithfulness ({method}, 3 rows)" in result.stderr
    html = report.read_text()
    assert "On this data set (3 rows spread over 12)" in html
    assert f"<td>{faithfulness['gradient']['insertion_auc']:.4f}</td>" in html

    # without --report (evaluate_model's path) the same figures, and 0 rows skips them
    plain = _run("evaluate", "--checkpoint", str(tiny_checkpoint), "--csv", str(csv_path), "--faithfulness-rows", "3")
    assert json.loads(plain.stdout.strip().splitlines()[-1])["faithfulness"] == faithfulness
    skipped = _run("evaluate", "--checkpoint", str(tiny_checkpoint), "--csv", str(csv_path), "--faithfulness-rows", "0")
    summary = json.loads(skipped.stdout.strip().splitlines()[-1])
    assert summary["faithfulness"] is None and "ece" in summary and "faithfulness (" not in skipped.stderr


@pytest.mark.slow  # a CLI process that renders and measures a benchmark
def test_bench_sort_of_clevr_faithfulness_part(tiny_checkpoint, tmp_path):
    result = _run("bench-sort-of-clevr", "--checkpoint", str(tiny_checkpoint), "--images", "1", "--workdir",
                  str(tmp_path), "--parts", "faithfulness", "--faithfulness-rows", "2")  # fmt: skip
    bench = json.loads(result.stdout.strip().splitlines()[-1])
    assert "canonical" not in bench and "pointing" not in bench  # only the part asked for
    assert bench["faithfulness"]["rows"] == 2 and bench["faithfulness"]["sampled_from"] == 20
    assert {"raw", "gradient"} <= set(bench["faithfulness"])


@pytest.mark.slow  # three CLI processes
def test_evaluate_reports_every_task_of_a_checkpoint_of_several(tmp_path):
    from ..evaluation.test_tasks import save_two_task_checkpoint, write_two_task_set

    checkpoint = save_two_task_checkpoint(tmp_path / "two-tasks")
    csv_path = write_two_task_set(tmp_path / "set")
    common = ("evaluate", "--checkpoint", str(checkpoint), "--csv", str(csv_path), "--faithfulness-rows", "0")
    plain = _run(*common, "--slice-by", "kind")
    summary = json.loads(plain.stdout.strip().splitlines()[-1])
    assert set(summary["tasks"]) == {"colour", "place"}
    place = summary["tasks"]["place"]
    assert place["n"] == 11 and place["confusion"]["labels"] == ["left", "middle", "right"]  # row 6 has no place
    assert set(place["per_class"]) == {"left", "middle", "right"} and 0 <= place["ece"] <= 1
    assert sum(s["n"] for s in place["slices"]["kind"].values()) == 11
    for key in ("n", "accuracy", "macro_f1", "ece", "per_class", "confusion"):
        assert summary[key] == summary["tasks"]["colour"][key]  # the first task at the top, as before
    assert f"place: accuracy {place['accuracy']:.4f}" in plain.stderr
    assert f"colour: accuracy {summary['accuracy']:.4f}" in plain.stderr

    # row by row (the report's path): the same figures, and a section per task in the report
    report = _run(*common, "--report", str(tmp_path / "r.html"))
    by_rows = json.loads(report.stdout.strip().splitlines()[-1])
    for task in ("colour", "place"):
        assert by_rows["tasks"][task]["accuracy"] == summary["tasks"][task]["accuracy"]
        assert by_rows["tasks"][task]["confusion"] == summary["tasks"][task]["confusion"]
    html = (tmp_path / "r.html").read_text()
    assert "<h2>Task: colour</h2>" in html and "<h2>Task: place</h2>" in html

    # one column given: that task alone, at the top
    alone = json.loads(_run(*common, "--label-column", "place").stdout.strip().splitlines()[-1])
    assert alone["accuracy"] == place["accuracy"] and alone["confusion"] == place["confusion"]


@pytest.mark.slow  # a CLI process
def test_evaluate_of_a_checkpoint_of_one_task_prints_what_it_always_did(tiny_checkpoint, tmp_path):
    csv_path = _write_set(tmp_path / "set", n=6)
    result = _run("evaluate", "--checkpoint", str(tiny_checkpoint), "--csv", str(csv_path), "--faithfulness-rows", "0")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert list(summary) == [
        "n",
        "accuracy",
        "macro_f1",
        "per_class",
        "confusion",
        "reliability",
        "ece",
        "faithfulness",
    ]
    assert result.stderr.count("accuracy ") == 1 and "label:" not in result.stderr
