"""Evaluating a checkpoint of several tasks: every task's rows, figures, confusion and heatmaps,
rows without a label for a task left out of it, and the report's section per task; a
checkpoint of one task evaluates as it always has."""

import csv

import pytest
import torch
from PIL import Image

from mmdemo.evaluation import engine as evalset
from mmdemo.evaluation import report
from mmdemo.inference.predictor import Predictor
from mmdemo.model.checkpoint import load_checkpoint, save_checkpoint
from mmdemo.model.classifier import build_model
from mmdemo.training.scoring import evaluate_model

from ..conftest import tiny_config

PLACES = ["left", "middle", "right"]


def two_task_config():
    """A tiny model answering a colour (first task) and a place (a further task)."""
    extra = [{"name": "place", "labels": PLACES, "temperature": 1.5}]
    return tiny_config(labels=["blue", "red"], task="colour", extra_tasks=extra)


def save_two_task_checkpoint(path, seed: int = 0):
    torch.manual_seed(seed)
    return save_checkpoint(build_model(two_task_config()), path, training={"command": "built by a test"})


def write_two_task_set(folder, n: int = 12):
    """``n`` images with a question each; columns image,text,colour,place,kind; row 3 has no
    colour and row 6 no place (cells a task leaves out)."""
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        Image.new("RGB", (30 + i, 24), (20 * i, 200 - 9 * i, 60)).save(folder / "img" / f"{i}.png")
        rows.append({"image": f"img/{i}.png", "text": f"where is thing {i}?", "colour": ["blue", "red"][i % 2],
                     "place": PLACES[i % 3], "kind": "even" if i % 2 == 0 else "odd"})  # fmt: skip
    rows[1]["colour"] = ""
    rows[4]["place"] = ""
    with open(folder / "data.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder / "data.csv"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_two_task_checkpoint(tmp_path_factory.mktemp("ckpt") / "two-tasks")


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return Predictor.from_checkpoint(checkpoint, "cpu", backend="torch")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = write_two_task_set(tmp_path_factory.mktemp("set"))
    return evalset.load_csv_set(path, task_names=["colour", "place"])


@pytest.fixture(scope="module")
def result(predictor, data):
    return evalset.evaluate(predictor, data, "two-tasks")


def test_the_label_columns_are_the_tasks_the_csv_has():
    header = ["image", "text", "colour", "place", "label"]
    assert evalset.task_columns(header, ["colour", "place"]) == (["colour", "place"], ["colour", "place"])
    assert evalset.task_columns(["image", "text", "place"], ["colour", "place"]) == (["place"], ["place"])
    # no task's column: "label" answers the first task; given columns answer the tasks in order
    assert evalset.task_columns(["image", "text", "label"], ["colour", "place"]) == (["label"], ["colour"])
    assert evalset.task_columns(header, ["colour", "place"], ["a", "b"]) == (["a", "b"], ["colour", "place"])
    assert evalset.task_columns(header, ["colour", "place"], "place") == (["place"], ["place"])
    # one task: "label" as before, or the task's own column when there is no "label"
    assert evalset.task_columns(header, ["label"]) == (["label"], ["label"])
    assert evalset.task_columns(["image", "text", "shape"], ["shape"]) == (["shape"], ["shape"])
    with pytest.raises(ValueError, match="3 label columns .* answers 2 task"):
        evalset.task_columns(header, ["colour", "place"], "a,b,c")


def test_each_task_gets_the_rows_with_a_label_for_it(result, data, predictor):
    assert data.label_columns == ["colour", "place"] and data.tasks == ["colour", "place"]
    assert "colour" not in data.extra_columns and data.slice_columns == ["kind"]
    assert list(result.tasks) == ["colour", "place"] and result.task == "colour"
    colour, place = result.tasks["colour"], result.tasks["place"]
    assert result.rows == colour.rows and result.labels == ["blue", "red"] and place.labels == PLACES
    assert [r.row for r in colour.rows] == [r for r in range(2, 14) if r != 3]  # row 3 has no colour
    assert [r.row for r in place.rows] == [r for r in range(2, 14) if r != 6]
    assert (colour.n_total, place.n_total) == (11, 11)
    assert [r.index for r in place.rows] == list(range(11))  # indices within the task's own rows
    for r in place.rows[:3]:
        p = predictor.predict(r.image, r.text)
        answer = p.tasks["place"]
        assert (r.prediction, r.label) == (answer["label"], data.columns[r.row]["place"])
        assert r.confidence == pytest.approx(answer["confidence"], abs=1e-5) and r.scores.keys() == set(PLACES)
        assert r.correct == (r.prediction == r.label)


def test_the_summary_has_every_task_and_the_first_at_the_top(result):
    s = evalset.summarize(result, "kind")
    assert set(s["tasks"]) == {"colour", "place"}
    place = s["tasks"]["place"]
    assert place["confusion"]["labels"] == PLACES and sum(map(sum, place["confusion"]["matrix"])) == 11
    rows = result.tasks["place"].rows
    assert place["accuracy"] == pytest.approx(sum(r.correct for r in rows) / 11)
    assert place["ece"] == place["calibration"]["ece"] and len(place["calibration"]["bins"]) == 15
    assert set(place["per_class"]) == set(PLACES) and place["slices"]["column"] == "kind"
    for key in ("accuracy", "macro_f1", "ece", "per_class", "confusion"):
        assert s[key] == s["tasks"]["colour"][key]
    # the filters work on a task's own result
    wrong = evalset.filter_rows(evalset.task_result(result, "place"), wrong_only=True)
    assert len(wrong) == sum(not r.correct for r in rows)
    with pytest.raises(ValueError, match="no task 'shape'"):
        evalset.task_result(result, "shape")


def test_a_tasks_gradient_heatmap_explains_its_own_answer(predictor, data):
    result = evalset.evaluate(predictor, data, "two-tasks", "gradient")
    r = result.tasks["place"].rows[0]
    own = predictor.predict(r.image, r.text, "gradient", task="place")
    first = predictor.predict(r.image, r.text, "gradient")
    flat = lambda grid: [float(v) for row in grid for v in row]  # noqa: E731
    assert flat(r.heatmap) == pytest.approx(flat(own.explanation.heatmap), abs=1e-3)
    assert not torch.allclose(own.explanation.heatmap, first.explanation.heatmap, atol=1e-2)
    colour = result.tasks["colour"].rows[0]
    assert colour.row == r.row and flat(colour.heatmap) == pytest.approx(flat(first.explanation.heatmap), abs=1e-3)


def test_evaluate_model_reports_every_task_over_its_own_rows(checkpoint, data, result):
    model = load_checkpoint(checkpoint)
    report = evaluate_model(model, data.examples, "cpu", tasks={"colour": "colour", "place": "place"})
    s = evalset.summarize(result)
    for task in ("colour", "place"):
        figures = report["tasks"][task]
        assert figures["n"] == 11 and figures["accuracy"] == pytest.approx(s["tasks"][task]["accuracy"])
        assert figures["confusion"]["matrix"] == s["tasks"][task]["confusion"]["matrix"]
        assert len(figures["predictions"]) == len(data.examples) == 12
    assert report["accuracy"] == report["tasks"]["colour"]["accuracy"]
    # the second task alone, read from its column
    alone = evaluate_model(model, data.examples, "cpu", tasks={"place": "place"})
    assert alone["accuracy"] == report["tasks"]["place"]["accuracy"] and set(alone["tasks"]) == {"place"}


def test_the_report_has_a_section_per_task(result):
    html = report.build_report(result)
    assert "<h2>Task: colour</h2>" in html and "<h2>Task: place</h2>" in html
    s = evalset.summarize(result)
    place = s["tasks"]["place"]
    assert f"<td class='l'>place</td><td>11</td><td>{100 * place['accuracy']:.1f} %</td>" in html
    assert html.count("aria-label='reliability diagram'") == 2
    section = html[html.index("<h2>Task: place</h2>") :]
    assert "<th>middle</th>" in section and "<th>red</th>" not in section  # the place task's confusion


def test_a_checkpoint_of_one_task_is_evaluated_as_before(tiny_checkpoint, tmp_path):
    from .test_evalset import _write_set

    data = evalset.load_csv_set(_write_set(tmp_path / "s", n=4), task_names=["label"])
    assert data.tasks == [] and data.label_columns == ["label"]
    result = evalset.evaluate(Predictor.from_checkpoint(tiny_checkpoint, "cpu"), data, "tiny")
    assert result.tasks == {} and "tasks" not in evalset.summarize(result)
    assert "Task:" not in report.build_report(result)
