"""The HTML evaluation report is one self-contained file (no external or relative links, images
embedded), and the per-prediction export holds an overlay PNG and the JSON."""

import base64
import io
import json
import re
import zipfile

import pytest
from PIL import Image

from mmdemo.evaluation import engine as evalset
from mmdemo.evaluation import report
from mmdemo.inference.predictor import Predictor

from .test_evalset import _write_set


@pytest.fixture(scope="module")
def result(tiny_checkpoint, tmp_path_factory):
    predictor = Predictor.from_checkpoint(tiny_checkpoint, "cpu")
    data = evalset.load_csv_set(_write_set(tmp_path_factory.mktemp("set"), n=12))
    return evalset.evaluate(predictor, data, "tiny")


def test_report_is_self_contained(result):
    card = "# tiny\n\nSee [the docs](https://example.com/docs) and ![logo](logo.png) and <https://example.org>.\n"
    html = report.build_report(result, card, {"tiny": {"right": 2, "partly": 1, "wrong": 0, "total": 3}})
    assert "http://" not in html and "https://" not in html
    links = re.findall(r"""(?:href|src|url)\s*[=(]\s*['"]?([^'" )>]+)""", html)
    assert links and all(link.startswith("data:image/png;base64,") for link in links), links
    assert "<script" not in html and "<link" not in html
    # the worst errors are embedded as decodable PNGs, one per wrong row shown
    images = re.findall(r"src='data:image/png;base64,([^']+)'", html)
    assert len(images) == min(8, sum(not r.correct for r in result.rows)) > 0
    assert Image.open(io.BytesIO(base64.b64decode(images[0]))).size[0] >= 384
    s = evalset.summarize(result)
    assert f"{100 * s['accuracy']:.1f} %" in html and f"{s['ece']:.4f}" in html
    assert "Accuracy per kind" in html and "points at the right thing" in html
    assert "<h3>tiny</h3>" in html and "the docs" in html  # the card, its link text kept, the link dropped
    assert "<svg" in html and "reliability diagram" in html


def test_export_prediction(tiny_checkpoint, tmp_path, fixture_path):
    predictor = Predictor.from_checkpoint(tiny_checkpoint, "cpu")
    image = Image.open(fixture_path("chelsea.jpg")).convert("RGB")
    p = predictor.predict(image, "Where is the cat?")
    settings = {"checkpoint": "tiny", "method": "raw", "opacity": 0.5}
    path = report.export_prediction(tmp_path, image, p.to_json(), p.explanation.word_maps.tolist(), settings)
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["overlay.png", "prediction.json"]
        overlay = Image.open(io.BytesIO(z.read("overlay.png")))
        document = json.loads(z.read("prediction.json"))
    assert overlay.size == image.size
    assert document["label"] == p.label and document["settings"] == settings
    assert document["tokens"] == ["Where", "is", "the", "cat", "?"] and len(document["word_maps"]) == 5
    assert len(document["word_maps"][0]) == 8 and document["scores"] == pytest.approx(p.scores)


def test_report_shows_measured_and_recorded_faithfulness(result, tiny_checkpoint, tmp_path):
    import shutil

    from mmdemo.model.checkpoint import update_training_record

    measured = {"rows": 4, "sampled_from": 12, "raw": {"deletion_auc": 0.4321, "random_deletion_auc": 0.6,
                "insertion_auc": 0.8765, "randomisation_rank_correlation": -0.1234}}  # fmt: skip
    path = shutil.copytree(tiny_checkpoint, tmp_path / "tiny")
    assert report.recorded_faithfulness(path) is None
    recorded = {"rows": 100, "gradient": {"deletion_auc": 0.5074, "insertion_auc": 0.8966}}
    update_training_record(path, benchmark={"faithfulness": recorded})
    assert report.recorded_faithfulness(path) == recorded
    html = report.build_report(result, "", None, measured, recorded=report.recorded_faithfulness(path))
    assert "On this data set (4 rows spread over 12)" in html
    assert "<td class='l'>raw</td><td>0.4321</td><td>0.6000</td><td>0.8765</td><td>-0.1234</td>" in html
    assert "Recorded in the checkpoint's benchmark (100 questions" in html
    assert "<td class='l'>gradient</td><td>0.5074</td><td>–</td><td>0.8966</td><td>–</td>" in html
    assert "Not measured" not in html
    assert "Not measured for this checkpoint" in report.build_report(result, "", None)  # no figure claimed
