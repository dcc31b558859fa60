"""Several label columns, one model: a head per task, masked empty cells, every prediction
path answering every task, old one-task checkpoints unchanged."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mmdemo.datasets.csv_table import read_csv
from mmdemo.inference.predictor import Predictor
from mmdemo.model.checkpoint import load_checkpoint, save_checkpoint
from mmdemo.training.loop import train
from mmdemo.training.settings import TrainSettings

from ..conftest import tiny_config


@pytest.fixture
def two_task_rows(tmp_path):
    """24 images, 2 rows each; colour (red / blue) and place (left / right) are two label columns
    that the picture alone decides; a few cells of each column are empty."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(24):
        red, left = i % 2 == 0, (i // 2) % 2 == 0
        a = np.full((32, 32, 3), 255, np.uint8)
        y = int(rng.integers(4, 20))
        x = int(rng.integers(1, 8)) if left else int(rng.integers(18, 24))
        a[y : y + 8, x : x + 8] = (255, 0, 0) if red else (0, 0, 255)
        Image.fromarray(a).save(tmp_path / "img" / f"{i}.png")
        for q in ("tell me about the square", "the square, please"):
            colour = "red" if red else "blue"
            place = "left" if left else "right"
            rows.append([f"img/{i}.png", q, colour, place])
    rows[3][2] = ""  # no colour: trains the place task only
    rows[8][3] = ""  # no place
    with open(tmp_path / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "question", "colour", "place"])
        writer.writerows(rows)
    return tmp_path / "train.csv"


def _settings(**kw):
    values = dict(
        epochs=30, batch_size=8, lr=3e-3, encoder_lr=3e-3, freeze=[], modality_dropout=0.0, seed=0, warmup=0.1
    )
    values.update(kw)
    return TrainSettings(**values)


def test_the_csv_names_several_label_and_text_columns(two_task_rows):
    ds = read_csv(two_task_rows, text_column="question", label_column="colour,place")
    assert ds.tasks == ["colour", "place"]
    assert ds.task_counts["colour"] == {"blue": 23, "red": 24} and ds.empty_labels == {"colour": 1, "place": 1}
    assert ds.examples[3].label == "" and ds.examples[3].labels == {"colour": "", "place": "left"}
    report = ds.report()
    assert "2 tasks" in report and "1 rows without a colour" in report
    # several text columns are joined in the order given
    joined = read_csv(two_task_rows, text_column=["colour", "question"], label_column="place")
    assert joined.examples[0].text == "red [SEP] tell me about the square"
    with pytest.raises(ValueError, match="more than once"):
        read_csv(two_task_rows, text_column="question", label_column=["place", "place"])


def test_one_model_learns_every_task_and_masks_empty_cells(two_task_rows, tmp_path):
    ds = read_csv(two_task_rows, text_column="question", label_column=["colour", "place"])
    result = train(ds, ds, _settings(), config=tiny_config())
    config = result.model.config
    assert config.task == "colour" and config.labels == ["blue", "red"]
    assert config.extra_tasks == [{"name": "place", "labels": ["left", "right"], "temperature": 1.0}]
    best = result.best_metrics
    assert best["tasks"]["colour"]["val_accuracy"] == 1.0 and best["tasks"]["place"]["val_accuracy"] == 1.0
    assert len(result.task_val) == 2 and int((result.task_val[0][1] == -1).sum()) == 1  # the empty cell
    from mmdemo.explain.render import training_curves

    names = [trace.name for trace in training_curves(result.history).data]
    assert "validation accuracy: colour" in names and "validation accuracy: place" in names  # the live curves

    save_checkpoint(result.model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")  # strict: the extra head's weights are all there
    assert sorted(k for k in loaded.state_dict() if k.startswith("extra_heads")) != []
    image = Image.open(two_task_rows.parent / "img" / "1.png")  # blue, left
    prediction = Predictor(loaded).predict(image, "tell me about the square")
    assert prediction.label == "blue"
    assert {t: a["label"] for t, a in prediction.tasks.items()} == {"colour": "blue", "place": "left"}
    assert sum(prediction.tasks["place"]["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    # the gradient method explains the task asked for: another task, another map
    served = Predictor(load_checkpoint(tmp_path / "ckpt"), backend="torch")  # a Predictor owns its model
    colour_map = served.predict(image, "tell me about the square", "gradient")
    place_map = served.predict(image, "tell me about the square", "gradient", "place")
    assert (colour_map.explained_task, place_map.explained_task) == ("colour", "place")
    assert not np.allclose(colour_map.explanation.heatmap, place_map.explanation.heatmap)
    with pytest.raises(ValueError, match="no task 'size'"):
        served.predict(image, "tell me about the square", task="size")

    # ONNX: one logits output per task, named after it, that ONNX Runtime runs as PyTorch does
    import onnxruntime as ort

    from mmdemo.inference.export import export_onnx
    from mmdemo.model.preprocess import image_to_tensor, tokenize

    loaded = load_checkpoint(tmp_path / "ckpt")
    written = export_onnx(loaded, tmp_path / "model.onnx")
    assert written["outputs"][0] == "logits" and written["outputs"][-1] == "logits_place"
    assert written["tasks"]["place"] == {"labels": ["left", "right"], "output": "logits_place", "temperature": 1.0}
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    batch = tokenize(served.tokenizer, ["tell me about the square"], loaded.config.max_tokens)
    pixels = image_to_tensor(image.convert("RGB"), loaded.config)[None]
    feed = {
        "pixels": pixels.numpy(),
        "input_ids": batch.input_ids.numpy(),
        "attention_mask": batch.attention_mask.numpy(),
    }
    place = session.run(["logits_place"], feed)[0]
    with torch.no_grad():
        expected = loaded(pixels, batch.input_ids, batch.attention_mask).extra_logits[0]
    assert np.allclose(place, expected.numpy(), atol=1e-4)


def test_the_task_weights_weigh_the_loss(two_task_rows):
    ds = read_csv(two_task_rows, text_column="question", label_column=["colour", "place"])
    only_colour = train(ds, ds, _settings(epochs=8, task_weights=[1.0, 0.0], weight_decay=0.0), config=tiny_config())
    both = train(ds, ds, _settings(epochs=8), config=tiny_config())
    assert only_colour.history[-1]["train_loss"] < both.history[-1]["train_loss"]
    head = both.model.extra_heads[0][-1].weight
    untrained = only_colour.model.extra_heads[0][-1].weight  # no gradient reached it ...
    fresh = train(ds, ds, _settings(epochs=1, lr=0.0, encoder_lr=0.0, weight_decay=0.0), config=tiny_config())
    assert torch.equal(untrained, fresh.model.extra_heads[0][-1].weight)  # ... so it is as initialised
    assert not torch.equal(head, untrained)


def test_one_task_models_keep_their_state_dict(sixteen_rows_path):
    ds = read_csv(sixteen_rows_path)
    model = train(ds, ds, _settings(epochs=1), config=tiny_config()).model
    assert not hasattr(model, "extra_heads") and model.config.extra_tasks == []
    assert not any(k.startswith("extra_heads") for k in model.state_dict())


@pytest.fixture
def sixteen_rows_path(tmp_path):
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(4):
        a = np.full((32, 32, 3), 255 if i % 2 else 0, np.uint8)
        Image.fromarray(a).save(tmp_path / "img" / f"{i}.png")
        rows.append([f"img/{i}.png", "bright?", "yes" if i % 2 else "no"])
    with open(tmp_path / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "text", "label"], *rows])
    return tmp_path / "train.csv"


@pytest.mark.slow
def test_train_and_batch_predict_answer_every_task_from_the_cli(two_task_rows, tmp_path):
    out = tmp_path / "model"
    run = lambda *a: subprocess.run([sys.executable, "-m", "mmdemo", *a], capture_output=True, text=True)  # noqa: E731
    trained = run(
        "train", "--csv", str(two_task_rows), "--text-column", "question", "--label-column", "colour",
        "--label-column", "place", "--out", str(out), "--image-encoder", "small_cnn", "--text-encoder", "gru",
        "--image-size", "32", "--fusion-dim", "32", "--epochs", "25", "--freeze", "--lr", "3e-3",
        "--stage2-blocks", "0",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "2 tasks, one per label column: colour, place" in trained.stderr
    record = json.loads((out / "config.json").read_text())["training"]
    assert set(record["tasks"]) == {"colour", "place"}
    assert record["tasks"]["place"]["rows_without_label"] == 1
    assert 0 < record["tasks"]["place"]["calibration"]["temperature"]

    predicted = run(
        "predict", "--checkpoint", str(out), "--csv", str(two_task_rows), "--text-column", "question",
        "--out", str(tmp_path / "pred.csv"),
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    with open(tmp_path / "pred.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # the CLI's paths answer every task (how well a model learns them: test_one_model_learns_every_task...)
    labels = {"colour": {"red", "blue"}, "place": {"left", "right"}}
    for task in ("colour", "place"):
        assert all(r[f"prediction_{task}"] in labels[task] for r in rows)
        assert all(0.0 < float(r[f"confidence_{task}"]) <= 1.0 for r in rows)
    assert all(r["prediction"] == r["prediction_colour"] for r in rows)


def test_new_labels_go_to_the_first_task_and_leave_the_others_unchanged(two_task_rows, tmp_path):
    from mmdemo.training.add_classes import AddClassesRequest, add_classes

    ds = read_csv(two_task_rows, text_column="question", label_column=["colour", "place"])
    model = train(ds, ds, _settings(epochs=6), config=tiny_config()).model
    start = save_checkpoint(model, tmp_path / "start")
    rows = []
    for i in range(3):
        a = np.full((32, 32, 3), 255, np.uint8)
        a[10:18, 2 + 6 * i : 10 + 6 * i] = (0, 200, 0)
        Image.fromarray(a).save(tmp_path / f"green{i}.png")
        rows.append([f"green{i}.png", "tell me about the square", "green"])
    with open(tmp_path / "new.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "text", "label"], *rows])
    new = read_csv(tmp_path / "new.csv")
    with pytest.raises(ValueError, match="first task, 'colour', only"):
        add_classes(AddClassesRequest(init=start, dataset=new, out=tmp_path / "wrong", task="place"))
    with pytest.raises(ValueError, match="no task 'size'"):
        add_classes(AddClassesRequest(init=start, dataset=new, out=tmp_path / "wrong", task="size"))
    result = add_classes(AddClassesRequest(init=start, dataset=new, out=tmp_path / "taught", task="colour"))
    assert any("unchanged" in w for w in result.warnings)
    taught = load_checkpoint(result.checkpoint)
    assert taught.config.labels == ["blue", "red", "green"] and taught.config.extra_tasks == model.config.extra_tasks
    before, after = load_checkpoint(start).state_dict(), taught.state_dict()
    for key in before:
        if not key.startswith("head."):
            assert torch.equal(before[key], after[key]), key  # only the first task's head changed
