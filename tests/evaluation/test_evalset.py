"""Evaluation of a data set row by row (mmdemo.evaluation.engine) and counterfactual image edits, with
the tiny offline model: summaries, confusion cells, filters, stop, uploads, comparison."""

import csv
import zipfile

import pytest
import torch
from PIL import Image

from mmdemo.evaluation import engine as evalset
from mmdemo.explain.counterfactual import background_colour, blank_squares
from mmdemo.inference.predictor import Predictor


def _write_set(folder, n=20, labels=("cat", "dog", "bird")):
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        Image.new("RGB", (30 + i, 24), (12 * i, 200 - 5 * i, 90)).save(folder / "img" / f"{i}.png")
        rows.append({"image": f"img/{i}.png", "text": f"what is thing {i}?", "label": labels[i % len(labels)],
                     "kind": "even" if i % 2 == 0 else "odd", "x": str(i)})  # fmt: skip
    with open(folder / "data.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder / "data.csv"


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    return Predictor.from_checkpoint(tiny_checkpoint, "cpu")


@pytest.fixture(scope="module")
def result(predictor, tmp_path_factory):
    data = evalset.load_csv_set(_write_set(tmp_path_factory.mktemp("set")))
    return evalset.evaluate(predictor, data, "tiny")


def test_calibration_by_hand():
    # bins of width 1/15: 0.9 falls in (0.8667, 0.9333], 0.6 in (0.5333, 0.6]
    c = evalset.calibration([0.9, 0.9, 0.6, 0.6], [True, False, True, True])
    assert c["ece"] == pytest.approx(0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6))
    filled = [b for b in c["bins"] if b["count"]]
    assert [(b["count"], b["accuracy"]) for b in filled] == [(2, 1.0), (2, 0.5)]
    assert len(c["bins"]) == 15 and c["mean_confidence"] == pytest.approx(0.75)
    assert evalset.calibration([1.0, 0.5], [True, True])["ece"] == pytest.approx(0.25)


def test_every_row_is_predicted_as_predict_batch_does(result, predictor, tmp_path):
    assert len(result.rows) == 20 and not result.stopped and result.slice_columns == ["kind"]
    r = result.rows[5]
    p = predictor.predict(r.image, r.text)
    assert (r.prediction, r.row, r.label, r.slices["kind"]) == (p.label, 7, "bird", "odd")
    assert r.confidence == pytest.approx(p.scores[p.label], abs=1e-5)
    assert r.correct == (r.prediction == r.label)
    assert len(r.heatmap) == 8 and r.peak_xy == pytest.approx(p.explanation.peak_xy, abs=1e-3)


def test_summary_and_confusion_cells_partition_the_rows(result):
    s = evalset.summarize(result, "kind")
    wrong = [r for r in result.rows if not r.correct]
    assert 0 < len(wrong) < 20  # labels cycle over 3 classes: some right, some wrong
    assert s["accuracy"] == pytest.approx(1 - len(wrong) / 20)
    cells = s["confusion"]["cells"]
    labels = s["confusion"]["labels"]
    assert sorted(i for rows in cells.values() for i in rows) == list(range(20))
    for key, indices in cells.items():
        t, p = (labels[int(k)] for k in key.split(","))
        assert all(result.rows[i].label == t and result.rows[i].prediction == p for i in indices)
        assert s["confusion"]["matrix"][int(key.split(",")[0])][int(key.split(",")[1])] == len(indices)
    even = [r.correct for r in result.rows if r.slices["kind"] == "even"]
    assert s["slices"]["values"]["even"] == {"n": 10, "accuracy": sum(even) / 10}
    assert 0 <= s["ece"] <= 1 and s["rows_evaluated"] == 20


def test_filters(result):
    wrong = evalset.filter_rows(result, wrong_only=True)
    assert wrong and all(not r.correct for r in wrong)
    assert len(wrong) == sum(not r.correct for r in result.rows)
    dogs = evalset.filter_rows(result, true_label="dog", slice_column="kind", slice_value="odd")
    assert dogs and all(r.label == "dog" and r.slices["kind"] == "odd" for r in dogs)
    assert len(dogs) == sum(r.label == "dog" and r.slices["kind"] == "odd" for r in result.rows)
    assert evalset.filter_rows(result, out_of_scope_only=True) == [
        r for r in result.rows if r.in_scope is False
    ]  # no flag on the tiny model: none is out of scope
    worst = evalset.worst_errors(result, 3)
    assert [r.confidence for r in worst] == sorted((r.confidence for r in wrong), reverse=True)[:3]


def test_stop_keeps_the_rows_done(predictor, tmp_path):
    data = evalset.load_csv_set(_write_set(tmp_path / "s", n=40))
    calls = []
    result = evalset.evaluate(
        predictor,
        data,
        "tiny",
        progress=lambda done, total: calls.append((done, total)),
        should_stop=lambda: bool(calls),
    )
    assert result.stopped and len(result.rows) == 16 and result.n_total == 40 and calls == [(16, 40)]
    assert evalset.summarize(result)["rows_evaluated"] == 16


def test_upload_with_zip_is_confined(predictor, tmp_path):
    source = tmp_path / "src"
    csv_path = _write_set(source, n=4)
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i in range(4):
            z.write(source / "img" / f"{i}.png", f"img/{i}.png")
    with open(csv_path, "a", newline="") as f:
        f.write("../../etc/passwd,what?,cat,odd,9\n")
    upload = tmp_path / "upload.csv"
    upload.write_bytes(csv_path.read_bytes())
    data = evalset.load_csv_set(upload, archive, tmp_path / "work")
    assert len(data.examples) == 4 and all(str(tmp_path / "work") in str(e.image) for e in data.examples)
    assert data.rejected == [(6, "image path '../../etc/passwd' must be relative, without '..'")]
    with pytest.raises(ValueError, match="no valid rows"):
        bad = tmp_path / "bad.csv"
        bad.write_text("image,text,label\nmissing.png,q,cat\n")
        evalset.load_csv_set(bad, None, tmp_path / "work")


def test_benchmark_set_has_question_types(tmp_path):
    data = evalset.benchmark_set(tmp_path, 2)
    assert len(data.examples) == 40 and data.slice_columns == ["qtype", "relational", "color"]
    assert {data.columns[e.row]["qtype"] for e in data.examples} <= {
        "shape", "horizontal", "vertical", "closest", "furthest", "count"
    }  # fmt: skip
    with pytest.raises(ValueError, match="1 to"):
        evalset.benchmark_set(tmp_path, 0)


def test_disagreements_between_methods(predictor, result, tmp_path):
    data = evalset.load_csv_set(_write_set(tmp_path / "s"))
    other = evalset.evaluate(predictor, data, "tiny", "gradient")
    assert evalset.disagreements(result, other) == []  # same weights: same answers, other heatmaps
    changed = evalset.EvalResult(**{**other.__dict__, "rows": [*other.rows]})
    flipped = changed.rows[3]
    changed.rows[3] = evalset.RowResult(**{**flipped.__dict__, "prediction": "nothing"})
    pairs = evalset.disagreements(result, changed)
    assert [(a.row, b.prediction) for a, b in pairs] == [(flipped.row, "nothing")]


def test_peak_shifts_name_rows_whose_heatmaps_peak_on_different_objects(tmp_path):
    """Two objects on white: a peak that moves within one object is no shift, one that moves to
    the other object is; an image that is no scene compares the heatmap's hottest cells."""
    scene = Image.new("RGB", (75, 75), "white")
    scene.paste((255, 0, 0), (5, 5, 16, 16))
    scene.paste((0, 0, 255), (50, 50, 61, 61))
    scene.save(tmp_path / "scene.png")
    photo = tmp_path / "photo.png"
    Image.effect_noise((40, 40), 60).convert("RGB").save(photo)

    def row(i, image, peak, hot):
        grid = [[0.0] * 4 for _ in range(4)]
        grid[hot[0]][hot[1]] = 1.0
        return evalset.RowResult(i, i + 2, str(image), "x", "q", "l", "l", 0.9, True, {"l": 0.9}, peak, grid, {})

    def result(rows):
        return evalset.EvalResult("tiny", "raw", "set", ["l"], rows, [])

    a = result([row(0, tmp_path / "scene.png", (8, 8), (0, 0)), row(1, tmp_path / "scene.png", (8, 8), (0, 0)),
                row(2, photo, (5, 5), (0, 0))])  # fmt: skip
    b = result([row(0, tmp_path / "scene.png", (14, 12), (1, 1)), row(1, tmp_path / "scene.png", (55, 57), (3, 3)),
                row(2, photo, (30, 30), (3, 2))])  # fmt: skip
    shifts = evalset.peak_shifts(a, b)
    assert [(s.a.row, s.where_a, s.where_b) for s in shifts] == [
        (3, "the object at (10, 10)", "the object at (56, 56)"),
        (4, "region row 1, column 1 of 4 x 4", "region row 4, column 3 of 4 x 4"),
    ]


def test_blank_squares_fill_with_the_background():
    image = Image.new("RGB", (75, 75), (255, 255, 255))
    image.paste((255, 0, 0), (30, 30, 40, 40))  # a red square at (30..39, 30..39)
    assert background_colour(image) == (255, 255, 255)
    edited = blank_squares(image, [(35, 35)], 12)
    assert edited.getpixel((35, 35)) == (255, 255, 255) and edited.getpixel((30, 30)) == (255, 255, 255)
    assert image.getpixel((35, 35)) == (255, 0, 0)  # the original is untouched
    other = blank_squares(image, [(5, 5)], 6)
    assert other.getpixel((35, 35)) == (255, 0, 0)


def test_faithfulness_on_a_bounded_sample_leaves_the_predictor_alone(tiny_checkpoint, predictor, result):
    weights = {n: p.detach().clone() for n, p in predictor.model.fusion.named_parameters()}
    pairs = [(r.image, r.text) for r in result.rows]
    figures = evalset.faithfulness(tiny_checkpoint, predictor, pairs, n=3, steps=4)
    assert figures["rows"] == 3 and figures["sampled_from"] == len(pairs) == 20
    for method in ("raw", "gradient"):
        assert -1 <= figures[method]["randomisation_rank_correlation"] < 1
        assert 0 <= figures[method]["deletion_auc"] <= 1 and 0 <= figures[method]["insertion_auc"] <= 1
    assert all(torch.equal(weights[n], p) for n, p in predictor.model.fusion.named_parameters())
    assert evalset.faithfulness(tiny_checkpoint, predictor, pairs, n=0) is None


def _held(tmp_path, name, rows):
    """A finished run of ``rows`` rows whose upload lives in its own folder."""
    folder = tmp_path / name
    folder.mkdir()
    result = evalset.EvalResult("c", "raw", name, ["a"], [None] * rows, [])  # only the row count matters here
    return {"result": result, "data": evalset.EvalSet(name, [], {}, [], [], "", folder=folder)}


def test_result_store_holds_one_run_per_visitor_and_reading_creates_nothing(tmp_path):
    store = evalset.ResultStore(max_visitors=2, max_rows=100)
    assert store.get("a-alice") is None and len(store) == 0  # a look (a refused request) stores nothing
    first = _held(tmp_path, "first", 10)
    store.put("a-alice", **first)
    second = _held(tmp_path, "second", 10)
    store.put("a-alice", **second)  # her next run replaces hers, and its upload goes
    assert store.get("a-alice")["result"].dataset == "second" and len(store) == 1
    assert not first["data"].folder.exists() and second["data"].folder.exists()


def test_a_full_result_store_refuses_a_newcomer_instead_of_evicting_anybody(tmp_path):
    store = evalset.ResultStore(max_visitors=2, max_rows=30)
    store.put("a-alice", **_held(tmp_path, "alice", 10))
    store.put("a-bob", **_held(tmp_path, "bob", 10))
    with pytest.raises(evalset.StoreFull, match=r"2 visitors, 20 rows; at most 2 and 30"):
        store.room("a-carol", 5)
    with pytest.raises(evalset.StoreFull):
        store.put("a-carol", **_held(tmp_path, "carol", 5))
    store.put("a-bob", **_held(tmp_path, "bob-again", 20))  # a visitor's own entry is theirs to replace
    with pytest.raises(evalset.StoreFull, match="evaluate fewer rows"):
        store.put("a-alice", **_held(tmp_path, "alice-big", 11))  # 11 + bob's 20 > 30
    assert store.get("a-alice")["result"].dataset == "alice" and store.get("a-bob")["result"].dataset == "bob-again"


def test_result_store_drops_what_was_not_used_for_its_time_to_live(tmp_path):
    now = [0.0]
    store = evalset.ResultStore(max_visitors=1, max_rows=100, ttl_s=60, clock=lambda: now[0])
    old = _held(tmp_path, "old", 10)
    store.put("a-alice", **old)
    now[0] = 50
    assert store.get("a-alice") is not None  # a use keeps it
    now[0] = 100
    with pytest.raises(evalset.StoreFull, match="dropped 1 min after its last use"):
        store.put("a-bob", **_held(tmp_path, "bob", 10))  # alice used hers 50 s ago
    now[0] = 111
    store.put("a-bob", **_held(tmp_path, "bob2", 10))  # 61 s unused: alice's went, with its files
    assert store.get("a-alice") is None and not old["data"].folder.exists()
