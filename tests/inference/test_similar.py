"""The similar-examples index: saved and loaded strictly, a training row finds itself first,
20,000 rows stay within a few MB, and the shipped checkpoint's index is whole and small."""

import json
import random
import tempfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from mmdemo.datasets.csv_table import read_csv
from mmdemo.imaging import decode_image
from mmdemo.inference.similar import (
    INDEX_JSON,
    INDEX_TENSORS,
    fit_index,
    joint_vectors,
    load_index,
    save_index,
    similar_to,
    thumbnail_png,
)
from mmdemo.model.checkpoint import load_checkpoint, read_config
from mmdemo.model.classifier import build_model
from mmdemo.training.similar_fit import index_rows

from ..conftest import tiny_config
from ..similar_rows import LABELS, write_noise_rows

SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints" / "sort-of-clevr"


def small_index(rows: int = 30, dims: int = 16):
    torch.manual_seed(0)
    pictures = {f"img/{i}.png": thumbnail_png(Image.new("RGB", (96, 48), (i * 20, 0, 0))) for i in range(0, 10, 2)}
    return fit_index(
        torch.randn(rows, dims),
        [f"img/{i % 10}.png" for i in range(rows)],
        [f"question {i % 3}" for i in range(rows)],
        [LABELS[i % 3] for i in range(rows)],
        pictures,
        dims=8,
    )


def test_an_index_round_trip_gives_the_same_rows_vectors_and_thumbnails(tmp_path):
    index = small_index()
    save_index(tmp_path, index)
    loaded = load_index(tmp_path)
    assert loaded is not None and len(loaded) == 30 and loaded.vectors.dtype == torch.float16
    for key in ("vectors", "mean", "projection", "row_image", "row_text", "row_label", "image_thumbnail"):
        assert torch.equal(getattr(loaded, key), getattr(index, key)), key
    assert (loaded.images, loaded.texts, loaded.labels) == (index.images, index.texts, index.labels)
    assert [loaded.row(i) for i in range(30)] == [index.row(i) for i in range(30)]
    assert loaded.thumbnails == index.thumbnails and len(loaded.thumbnails) == 5
    assert loaded.thumbnail(0).size == (48, 24) and loaded.thumbnail(1) is None  # img/1.png has none
    assert load_index(tmp_path / "nothing-here") is None


def test_a_changed_or_incomplete_index_is_refused_by_name(tmp_path):
    save_index(tmp_path, small_index())
    data = json.loads((tmp_path / INDEX_JSON).read_text())
    tensors = load_file(tmp_path / INDEX_TENSORS)

    def refused(match: str) -> None:
        with pytest.raises(ValueError, match=match) as error:
            load_index(tmp_path)
        assert str(tmp_path.parent) not in str(error.value)  # the checkpoint's name, never its server path

    (tmp_path / INDEX_JSON).write_text(json.dumps({**data, "extra": 1}))
    refused("exactly the keys")
    (tmp_path / INDEX_JSON).write_text(json.dumps({**data, "labels": data["labels"][:2]}))
    refused("row_label names entries")
    (tmp_path / INDEX_JSON).write_text(json.dumps({**data, "version": 99}))
    refused("version 99")
    (tmp_path / INDEX_JSON).write_text(json.dumps(data))
    save_file({**tensors, "more": torch.zeros(1)}, tmp_path / INDEX_TENSORS)
    refused("exactly the tensors")
    save_file({**tensors, "vectors": tensors["vectors"].float()}, tmp_path / INDEX_TENSORS)
    refused("vectors is torch.float32")
    (tmp_path / INDEX_TENSORS).write_bytes(b"not safetensors")
    refused("not a safetensors file")
    (tmp_path / INDEX_TENSORS).unlink()
    refused("similar.safetensors is missing")


def test_a_training_row_finds_itself_first(tmp_path):
    csv_path = write_noise_rows(tmp_path)
    torch.manual_seed(0)
    model = build_model(tiny_config(labels=list(LABELS)))
    rows = list(read_csv(csv_path).examples)
    random.Random(0).shuffle(rows)  # the index groups rows by image: its order is not the input's
    save_index(tmp_path, index_rows(model, rows, tmp_path, "cpu"))
    index = load_index(tmp_path)
    assert len(index) == 48 and len(index.images) == 12 and len(index.thumbnails) == 12
    for e in rows[:16]:  # a third of the rows, in the shuffled order
        first, second = similar_to(model, index, decode_image(e.image), e.text, k=2)
        assert (first.image, first.text, first.label) == (
            Path(e.image).relative_to(tmp_path).as_posix(),
            e.text,
            e.label,
        )
        assert first.similarity > 0.999 and second.similarity < first.similarity


def test_a_query_from_another_model_is_refused(tmp_path):
    index = small_index(dims=16)
    with pytest.raises(ValueError, match="built for 16-dimensional"):
        index.query(torch.randn(64))
    with pytest.raises(ValueError, match="k must be"):
        index.query(torch.randn(16), k=0)


def test_twenty_thousand_rows_fit_in_a_few_megabytes(tmp_path):
    n = 20_000
    index = fit_index(
        torch.randn(n, 384),
        [f"images/{i:05d}.png" for i in range(n)],  # every row its own image and question: the worst case
        [f"Is the object in picture {i} on the left or the right?" for i in range(n)],
        [str(i % 14) for i in range(n)],
    )
    save_index(tmp_path, index)
    tensors, listing = (tmp_path / INDEX_TENSORS).stat().st_size, (tmp_path / INDEX_JSON).stat().st_size
    assert tensors < 3.1e6  # 64 float16 and three int32 codes per row, the reduction
    assert tensors + listing < 5e6  # with 20,000 distinct texts and images listed once each


def test_the_shipped_index_is_whole_small_and_knows_only_the_checkpoints_answers():
    index = load_index(SHIPPED)
    assert index is not None
    size = (SHIPPED / INDEX_TENSORS).stat().st_size + (SHIPPED / INDEX_JSON).stat().st_size
    assert size < 1.5e6
    assert len(index) == 20 * len(index.images) and len(index.thumbnails) == len(index.images)
    assert set(index.labels) <= set(read_config(SHIPPED).labels)
    assert index.mean.shape == (2 * read_config(SHIPPED).fusion_dim,)


@pytest.mark.slow  # loads the shipped model and encodes a scene (seconds)
def test_a_shipped_training_scene_finds_itself():
    from mmdemo.datasets.sortofclevr import generate

    index = load_index(SHIPPED)
    model = load_checkpoint(SHIPPED)
    row = index.row(7)
    # the index holds the first scenes of the shipped model's training set (seed 1)
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = generate(Path(tmp), 1, seed=1)
        image = decode_image(csv_path.parent / row.image)
    first = similar_to(model, index, image, row.text, k=1)[0]
    assert (first.image, first.text, first.label) == (row.image, row.text, row.label) and first.similarity > 0.99
    assert joint_vectors(model, [image], [row.text]).shape == (1, index.mean.shape[0])
