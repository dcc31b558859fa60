"""The CLI through a subprocess: predict (single and CSV batch) and bench."""

import csv
import json
import subprocess
import sys

import pytest
from PIL import Image

from mmdemo.inference.predictor import Predictor


def _run(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "mmdemo", *args], capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(result.stderr)
    return result


def test_predict_prints_one_json_object(tiny_checkpoint, fixture_path):
    result = _run(
        "predict",
        "--checkpoint",
        str(tiny_checkpoint),
        "--image",
        fixture_path("chelsea.jpg"),
        "--text",
        "Where is the cat?",
    )
    out = json.loads(result.stdout.strip().splitlines()[-1])
    alone = Predictor.from_checkpoint(tiny_checkpoint, "cpu").predict(fixture_path("chelsea.jpg"), "Where is the cat?")
    assert out["label"] == alone.label  # the answer Python's Predictor gives
    assert out["scores"] == pytest.approx(alone.scores, abs=1e-5)
    assert set(out["scores"]) == {"cat", "dog", "bird"} and sum(out["scores"].values()) == pytest.approx(1, abs=1e-5)
    assert out["label"] == max(out["scores"], key=out["scores"].get)
    assert out["tokens"] == ["Where", "is", "the", "cat", "?"]
    heatmap = out["heatmap"]
    assert len(heatmap) == 8 and all(len(row) == 8 for row in heatmap)  # tiny model: 32 px / stride 4
    values = [v for row in heatmap for v in row]
    assert min(values) == 0 and max(values) == 1
    x, y = out["peak_xy"]
    assert 0 <= x <= 451 and 0 <= y <= 300  # chelsea.jpg is 451x300


@pytest.mark.slow  # three CLI processes
def test_predict_errors_are_clear(tiny_checkpoint, tmp_path, fixture_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    result = _run("predict", "--checkpoint", str(tiny_checkpoint), "--image", str(empty), "--text", "hi", check=False)
    assert result.returncode == 2 and "empty.png: the file is empty" in result.stderr
    result = _run(
        "predict",
        "--checkpoint",
        str(tiny_checkpoint),
        "--image",
        fixture_path("chelsea.jpg"),
        "--text",
        "  ",
        check=False,
    )
    assert result.returncode == 2 and "the text is empty" in result.stderr
    result = _run(
        "predict",
        "--checkpoint",
        str(tmp_path / "none"),
        "--image",
        fixture_path("chelsea.jpg"),
        "--text",
        "x",
        check=False,
    )
    assert result.returncode == 2 and "checkpoint folder not found" in result.stderr


@pytest.mark.slow  # a CLI process; the fast subset keeps test_predict_prints_one_json_object
def test_predict_csv_batch_marks_failed_rows(tiny_checkpoint, tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(5):
        Image.new("RGB", (40 + i, 30), (40 * i, 100, 200)).save(tmp_path / "img" / f"{i}.png")
    (tmp_path / "img" / "broken.png").write_bytes(b"garbage")
    rows = [{"id": str(i), "image": f"img/{i}.png", "text": f"question {i}"} for i in range(5)]
    rows.insert(2, {"id": "bad", "image": "img/broken.png", "text": "q"})
    rows.insert(4, {"id": "gone", "image": "img/missing.png", "text": "q"})
    with open(tmp_path / "in.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "image", "text"])
        writer.writeheader()
        writer.writerows(rows)
    result = _run(
        "predict",
        "--checkpoint",
        str(tiny_checkpoint),
        "--csv",
        str(tmp_path / "in.csv"),
        "--out",
        str(tmp_path / "out.csv"),
        "--batch-size",
        "2",
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == {"rows": 7, "predicted": 5, "errors": 2, "out": str(tmp_path / "out.csv")}
    out = list(csv.DictReader(open(tmp_path / "out.csv")))
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    assert list(out[0]) == [
        "id", "image", "text", "prediction", "confidence", "in_scope", "scope_reasons", "image_distance",
        "text_similarity", "image_reliance", "peak_x", "peak_y", "error",
    ]  # fmt: skip
    by_id = {r["id"]: r for r in out}
    assert "not an image" in by_id["bad"]["error"] and by_id["bad"]["prediction"] == ""
    # a failed row is never an answer in scope; the tiny checkpoint has no statistics: in scope
    assert by_id["bad"]["in_scope"] == by_id["gone"]["in_scope"] == "false"
    assert all(by_id[str(i)]["in_scope"] == "true" for i in range(5))
    assert "file not found" in by_id["gone"]["error"]
    predictor = Predictor.from_checkpoint(tiny_checkpoint, "cpu")
    for i in range(5):
        r = by_id[str(i)]
        alone = predictor.predict(tmp_path / "img" / f"{i}.png", f"question {i}")
        assert r["error"] == "" and r["prediction"] == alone.label  # each row as if asked alone
        assert float(r["confidence"]) == pytest.approx(alone.scores[alone.label], abs=2e-4)
        assert 0 < float(r["confidence"]) <= 1 and 0 <= float(r["peak_x"]) <= 40 + i and 0 <= float(r["peak_y"]) <= 30


@pytest.mark.slow  # a CLI process
def test_predict_csv_missing_column(tiny_checkpoint, tmp_path):
    (tmp_path / "in.csv").write_text("picture,text\na.png,hello\n")
    result = _run(
        "predict",
        "--checkpoint",
        str(tiny_checkpoint),
        "--csv",
        str(tmp_path / "in.csv"),
        "--out",
        str(tmp_path / "o.csv"),
        check=False,
    )
    assert (
        result.returncode == 2
        and "missing column(s) ['image']" in result.stderr
        and "found ['picture', 'text']" in result.stderr
    )


@pytest.mark.slow  # a CLI process that times the model
def test_bench_prints_figures(tiny_checkpoint):
    result = _run("bench", "--checkpoint", str(tiny_checkpoint), "--repeats", "5")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(out) >= {
        "device",
        "forward_ms_p50",
        "forward_ms_p95",
        "throughput_bs32",
        "matmul_gflops",
        "model_gflops",
    }
    assert out["device"] == "cpu"
    assert 0 < out["forward_ms_p50"] <= out["forward_ms_p95"]
    assert out["throughput_bs32"] > 0 and out["matmul_gflops"] > 0 and out["model_gflops"] > 0
