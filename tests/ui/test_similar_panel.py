"""The Predict tab's similar training examples, through the tab's own handlers: after an answer
from an indexed checkpoint the panel lists its training rows (picture, text, label,
similarity); nothing for a checkpoint without an index or for a state that is not the page's;
a picture from disk only from inside the training CSV's folder."""

import json
import re

import pytest
import torch

gr = pytest.importorskip("gradio")

from mmdemo import ui  # noqa: E402
from mmdemo.app.registry import CheckpointRegistry  # noqa: E402
from mmdemo.datasets.csv_table import read_csv  # noqa: E402
from mmdemo.inference.similar import fit_index, load_index, save_index  # noqa: E402
from mmdemo.model.checkpoint import save_checkpoint  # noqa: E402
from mmdemo.model.classifier import build_model  # noqa: E402
from mmdemo.training.similar_fit import index_rows  # noqa: E402
from mmdemo.ui.similar import SimilarPanel  # noqa: E402

from ..conftest import tiny_config  # noqa: E402
from ..similar_rows import LABELS, TEXTS, indexed_checkpoint, write_noise_rows  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("similar-app")
    checkpoint, csv_path = indexed_checkpoint(root / "shipped", "indexed")
    torch.manual_seed(0)
    save_checkpoint(build_model(tiny_config(labels=list(LABELS))), root / "shipped" / "plain")
    app = ui.App(CheckpointRegistry(root / "mine", root / "shipped"), work_dir=str(root / "work"))
    return app, checkpoint, csv_path


def answer_state(app, checkpoint: str, image: str, text: str) -> dict:
    return ui.PredictTab(app).answer(image, text, checkpoint, "raw", 0.5)[-1]


def test_after_an_answer_the_panel_lists_the_most_similar_training_rows(setup):
    app, _, csv_path = setup
    image = str(csv_path.parent / "img" / "5.png")
    state = answer_state(app, "indexed", image, TEXTS[2])
    shown = SimilarPanel(app).show(state, image)
    rows = re.findall(r'<tr class="similar-row">(.*?)</tr>', shown)
    assert len(rows) == 5 and "Most similar training examples" in shown and "cosine similarity" in shown
    assert rows[0].count("data:image/png;base64,") == 1  # its thumbnail, inline: no server path
    assert TEXTS[2] in rows[0] and f"<b>{LABELS[(5 + 2) % 3]}</b>" in rows[0]  # the row itself first
    figures = [float(re.findall(r"<td>(-?[0-9.]+)</td>", row)[-1]) for row in rows]
    assert figures == sorted(figures, reverse=True) and figures[0] > 0.99
    assert str(csv_path.parent) not in shown


def test_nothing_is_shown_without_an_index_or_for_another_pages_state(setup):
    app, _, csv_path = setup
    image = str(csv_path.parent / "img" / "1.png")
    assert SimilarPanel(app).show(answer_state(app, "plain", image, TEXTS[0]), image) == ""
    state = answer_state(app, "indexed", image, TEXTS[0])
    assert SimilarPanel(app).show(state, str(csv_path.parent / "img" / "2.png")) == ""  # not this page's image
    assert SimilarPanel(app).show(None, image) == ""


def test_texts_are_escaped(tmp_path):
    checkpoint, csv_path = indexed_checkpoint(tmp_path / "shipped", "escaped")
    index = load_index(checkpoint)
    first = index.row(0)
    index.texts[int(index.row_text[0])] = "<script>alert(1)</script>"
    save_index(checkpoint, index)
    app = ui.App(CheckpointRegistry(tmp_path / "mine", tmp_path / "shipped"), work_dir=str(tmp_path / "work"))
    image = str(csv_path.parent / first.image)
    shown = SimilarPanel(app).show(answer_state(app, "escaped", image, first.text), image)
    assert "<script>" not in shown and "&lt;script&gt;alert(1)&lt;/script&gt;" in shown


def test_pictures_come_from_the_training_csvs_folder_only(tmp_path):
    """An index without thumbnails: a row's picture is read from the training CSV's folder, and a
    row naming a file outside it gets none, though the file exists."""
    data = tmp_path / "data"
    csv_path = write_noise_rows(data, images=2)
    (tmp_path / "outside.png").write_bytes((data / "img" / "0.png").read_bytes())
    torch.manual_seed(0)
    model = build_model(tiny_config(labels=list(LABELS)))
    checkpoint = save_checkpoint(model, tmp_path / "shipped" / "disk", training={"csv": str(csv_path.resolve())})
    built = index_rows(model, read_csv(csv_path).examples, data, "cpu", thumbnail_bytes=0)
    assert not built.thumbnails
    # the same vectors, with the second image's rows renamed to a file outside the CSV's folder
    images = ["../outside.png" if built.row(i).image == "img/1.png" else built.row(i).image for i in range(8)]
    vectors = torch.randn(8, built.mean.shape[0])
    save_index(checkpoint, fit_index(vectors, images, [built.row(i).text for i in range(8)], ["cat"] * 8))
    app = ui.App(CheckpointRegistry(tmp_path / "mine", tmp_path / "shipped"), work_dir=str(tmp_path / "work"))
    found = app.similar_examples("disk", str(data / "img" / "0.png"), TEXTS[0])
    pictures = {
        e.neighbour.image: e.picture for e in app.similar.find("disk", None, str(data / "img" / "0.png"), TEXTS[0], 8)
    }
    assert len(found) == 5 and set(pictures) == {"img/0.png", "../outside.png"}
    assert pictures["img/0.png"] is not None and pictures["img/0.png"].size == (32, 32)
    assert pictures["../outside.png"] is None
    record = json.loads((checkpoint / "config.json").read_text())["training"]
    assert record["csv"] == str(csv_path.resolve())
