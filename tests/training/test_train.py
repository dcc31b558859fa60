"""The training engine: a tiny model overfits 16 rows, runs are deterministic, the CLI trains
and evaluates end to end."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmdemo.datasets.csv_table import read_csv
from mmdemo.training.loop import grouped_batches, train
from mmdemo.training.settings import TrainSettings

from ..conftest import tiny_config


@pytest.fixture
def sixteen_rows(tmp_path):
    """16 rows, 8 images x 2 questions, 4 classes decided by colour and question together."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(8):
        colour = (255, 0, 0) if i % 2 else (0, 0, 255)
        a = np.full((32, 32, 3), 255, np.uint8)
        y, x = rng.integers(4, 24, size=2)
        a[y : y + 8, x : x + 8] = colour
        Image.fromarray(a).save(tmp_path / "img" / f"{i}.png")
        for q in ("what colour is it?", "is it warm or cold?"):
            label = ("red" if i % 2 else "blue") if q.startswith("what") else ("warm" if i % 2 else "cold")
            rows.append([f"img/{i}.png", q, label])
    with open(tmp_path / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "text", "label"])
        writer.writerows(rows)
    return tmp_path / "train.csv"


def _settings(**kw):
    values = dict(
        epochs=40, batch_size=8, lr=3e-3, encoder_lr=3e-3, freeze=[], modality_dropout=0.0, seed=0, warmup=0.1
    )
    values.update(kw)
    return TrainSettings(**values)


def test_tiny_model_overfits_16_rows(sixteen_rows):
    ds = read_csv(sixteen_rows)
    result = train(ds, ds, _settings(), config=tiny_config(labels=["x", "y"]))
    assert result.model.config.labels == ["blue", "cold", "red", "warm"]
    assert result.best_metrics["val_accuracy"] == 1.0
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] / 5
    assert [h["epoch"] for h in result.history] == list(range(1, 41))


def test_training_is_deterministic_given_the_seed(sixteen_rows):
    ds = read_csv(sixteen_rows)
    a = train(ds, ds, _settings(epochs=3), config=tiny_config())
    b = train(ds, ds, _settings(epochs=3), config=tiny_config())
    c = train(ds, ds, _settings(epochs=3, seed=1), config=tiny_config())
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), name
    assert [h["train_loss"] for h in a.history] != [h["train_loss"] for h in c.history]


def test_stop_request_ends_training_and_keeps_the_best_epoch(sixteen_rows):
    ds = read_csv(sixteen_rows)
    events = []
    epochs_done = lambda: sum(e["stage"] == "epoch" for e in events)  # noqa: E731
    result = train(
        ds,
        ds,
        _settings(epochs=10),
        config=tiny_config(),
        progress=events.append,
        should_stop=lambda: epochs_done() >= 2,
    )
    assert len(result.history) == 2
    best = max(result.history, key=lambda h: (h["val_accuracy"], -h["val_loss"]))  # the ranking of epochs
    assert result.best_epoch == best["epoch"] and result.best_metrics["val_loss"] == best["val_loss"]
    assert {"prepare", "train", "epoch"} <= {e["stage"] for e in events}


def test_batches_keep_an_images_rows_together():
    rows_image = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 3])
    batches = grouped_batches(rows_image, 3, torch.Generator().manual_seed(0))
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    order = torch.cat(batches)
    images = rows_image[order].tolist()
    # each image's rows are contiguous in the epoch order
    seen = []
    for i in images:
        if not seen or seen[-1] != i:
            assert i not in seen
            seen.append(i)


def _cli(*args):
    result = subprocess.run([sys.executable, "-m", "mmdemo", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


@pytest.mark.slow  # two CLI processes, one training 30 epochs
def test_train_and_evaluate_cli(sixteen_rows, tmp_path):
    out = tmp_path / "ck"
    tiny = [
        "--image-encoder",
        "small_cnn",
        "--image-size",
        "32",
        "--text-encoder",
        "gru",
        "--fusion-dim",
        "32",
        "--fusion-heads",
        "2",
        "--fusion-layers",
        "1",
        "--region-layers",
        "1",
        "--dropout",
        "0",
    ]
    summary, stderr = _cli(
        "train",
        "--csv",
        str(sixteen_rows),
        "--val-csv",
        str(sixteen_rows),
        "--out",
        str(out),
        "--epochs",
        "30",
        "--batch-size",
        "8",
        "--lr",
        "3e-3",
        "--encoder-lr",
        "3e-3",
        "--freeze",
        "--modality-dropout",
        "0",
        *tiny,
    )
    assert summary["checkpoint"] == str(out) and summary["val_accuracy"] > 0.7
    assert "16 rows accepted, 0 rejected" in stderr
    card = (out / "README.md").read_text()
    assert "python -m mmdemo train --csv" in card and "val_accuracy" in card
    report, _ = _cli("evaluate", "--checkpoint", str(out), "--csv", str(sixteen_rows))
    assert report["n"] == 16 and report["accuracy"] == pytest.approx(summary["val_accuracy"])
    assert set(report["per_class"]) == {"blue", "cold", "red", "warm"}
    assert set(report["per_class"]["red"]) == {"precision", "recall", "f1", "support"}
    assert report["confusion"]["labels"] == ["blue", "cold", "red", "warm"]
    assert sum(map(sum, report["confusion"]["matrix"])) == 16
    result = subprocess.run(
        [sys.executable, "-m", "mmdemo", "train", "--csv", str(sixteen_rows), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "already exists" in result.stderr


def test_finetune_saves_nothing_without_a_training_step(sixteen_rows, tmp_path):
    from mmdemo.training.finetune import FinetuneRequest, finetune

    out = tmp_path / "never"
    request = FinetuneRequest(read_csv(sixteen_rows), out, _settings(epochs=1), config=tiny_config())
    with pytest.raises(RuntimeError, match="before the first training step"):
        finetune(request, should_stop=lambda: True)
    assert not out.exists()


def test_finetune_record_says_when_the_best_epoch_was_cut_short(sixteen_rows, tmp_path):
    from mmdemo.training.finetune import FinetuneRequest, finetune

    calls = []

    def stop_after_one_step():
        calls.append(1)
        return len(calls) > 1  # the first check lets one step run, the next one stops

    request = FinetuneRequest(
        read_csv(sixteen_rows), tmp_path / "m", _settings(epochs=3, batch_size=4), config=tiny_config()
    )
    result = finetune(request, should_stop=stop_after_one_step)
    saved = json.loads((tmp_path / "m" / "config.json").read_text())["training"]
    assert result.stopped_by == "stop" and saved["stopped_by"] == "stop"
    assert saved["best_epoch"] == 1 and "cut short" in saved["best_epoch_note"]
    assert "cut short" in (tmp_path / "m" / "README.md").read_text()


@pytest.mark.slow  # a CLI process
def test_evaluate_prints_ece_and_accuracy_per_slice(sixteen_rows, tiny_checkpoint):
    report, stderr = _cli(
        "evaluate", "--checkpoint", str(tiny_checkpoint), "--csv", str(sixteen_rows), "--slice-by", "text"
    )
    assert 0 <= report["ece"] <= 1 and 0 <= report["accuracy"] <= 1 and "macro_f1" in report
    slices = report["slices"]["text"]
    assert set(slices) == {"what colour is it?", "is it warm or cold?"}
    assert sum(s["n"] for s in slices.values()) == 16
    assert "ECE" in stderr and "text=what colour is it?" in stderr


def _two_stages(**kw):
    """Stage 1 on cached features, then the top 2 blocks of a pretrained EfficientNet-Lite0."""
    values = dict(
        epochs=2, freeze=["image_encoder"], stage2_blocks=2, stage2_epochs=2, stage2_lr=3e-3, layer_decay=0.5,
        augment_views=3, augment_shift=0.1, augment_colour=0.2,
    )  # fmt: skip
    values.update(kw)
    return _settings(**values)


def _lite0_config():
    return tiny_config(image_encoder="efficientnet_lite0", frozen=["image_encoder"])


def test_stage2_trains_only_the_top_blocks_and_keeps_batchnorm_statistics(sixteen_rows, tmp_path):
    from mmdemo.model.checkpoint import load_checkpoint, save_checkpoint
    from mmdemo.model.encoders import EfficientNetLite0

    pretrained = EfficientNetLite0(16)
    pretrained.load_pretrained()
    before = pretrained.state_dict()
    states = []
    ds = read_csv(sixteen_rows)
    result = train(ds, ds, _two_stages(), config=_lite0_config(), on_epoch=states.append)
    assert [h["training_stage"] for h in result.history] == [1, 1, 2, 2]
    assert [s["stage"] for s in result.stages] == [1, 2] and result.stages[1]["ran"]
    assert result.stages[1]["samples_per_s"] > 0 and result.stages[1]["seconds"] > 0

    last = states[-1].model  # the trained weights after the last stage-2 epoch (best or not)
    encoder_keys = {k.removeprefix("image_encoder.") for k in last if k.startswith("image_encoder.")}
    assert encoder_keys and all(k.startswith(("_blocks.9.", "_blocks.10.")) for k in encoder_keys)
    for key in encoder_keys:
        changed = not torch.equal(last[f"image_encoder.{key}"], before[key])
        # convolution weights and BatchNorm scales / shifts learn; running statistics stay
        assert changed == (not key.endswith(("running_mean", "running_var", "num_batches_tracked"))), key
    # every block below them is the package's, untouched
    model_state = result.model.image_encoder.state_dict()
    for key, value in before.items():
        if not key.startswith(("_blocks.9.", "_blocks.10.")):
            assert torch.equal(model_state[key], value), key

    # the checkpoint stores the tuned blocks and references the rest of the encoder
    save_checkpoint(result.model, tmp_path / "m")
    stored = load_checkpoint(tmp_path / "m")
    tuned = result.model.config.image_tuned_blocks
    assert stored.config.image_tuned_blocks == tuned
    for (name, p), q in zip(result.model.state_dict().items(), stored.state_dict().values()):
        assert torch.equal(p, q), name
    # the best epoch overall is kept: from stage 2, with its blocks; from stage 1, without any
    assert tuned == (2 if result.best_epoch > 2 else 0)


def test_stage2_runs_only_when_the_time_left_allows_it(sixteen_rows):
    ds = read_csv(sixteen_rows)
    result = train(ds, ds, _two_stages(), config=_lite0_config(), time_left=lambda: 0.5)
    assert [h["training_stage"] for h in result.history] == [1, 1]
    stage2 = result.stages[1]
    assert not stage2["ran"] and "s left" in stage2["why"]
    assert result.model.config.image_tuned_blocks == 0


def test_a_checkpoint_with_tuned_blocks_serves_its_own_weights(sixteen_rows, tmp_path):
    """The Predictor (ONNX Runtime on the CPU) loads the stored top blocks over the package's."""
    from mmdemo.inference.predictor import Predictor
    from mmdemo.model.checkpoint import save_checkpoint
    from mmdemo.model.classifier import build_model

    image, question = str(sixteen_rows.parent / "img" / "0.png"), "what colour is it?"
    torch.manual_seed(0)
    model = build_model(tiny_config(image_encoder="efficientnet_lite0", frozen=["image_encoder"]))
    save_checkpoint(model, tmp_path / "plain")
    with torch.no_grad():
        for block in model.tune_image_blocks(3):
            for p in block.parameters():
                p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(model, tmp_path / "tuned")
    plain = Predictor.from_checkpoint(tmp_path / "plain").predict(image, question).scores
    served = Predictor.from_checkpoint(tmp_path / "tuned").predict(image, question).scores
    direct = Predictor(model.eval(), backend="torch").predict(image, question).scores
    assert max(abs(served[label] - plain[label]) for label in plain) > 1e-3  # the tuned blocks count
    for label, score in direct.items():
        assert abs(served[label] - score) < 1e-3, label


def test_fine_tuning_a_checkpoint_whose_encoder_trained_keeps_that_encoder_when_it_freezes_it(tmp_path):
    """A checkpoint whose MiniLM was trained stores it; fine-tuned again with the encoders frozen
    (the recipe's default), the new checkpoint must still store the trained weights, not point
    at the package's."""
    from mmdemo.model.checkpoint import load_checkpoint, save_checkpoint
    from mmdemo.model.classifier import build_model

    from ..conftest import write_colour_scenes

    dataset = read_csv(write_colour_scenes(tmp_path / "data"))
    config = tiny_config(labels=dataset.labels, text_encoder="minilm", text_model="minilm", frozen=[])
    torch.manual_seed(0)
    first = build_model(config)
    with torch.no_grad():  # as if an earlier run had trained the text encoder
        for p in first.text_encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_checkpoint(first, tmp_path / "first")
    assert any(k.startswith("text_encoder.") for k in first.stored_state_dict())
    init = load_checkpoint(tmp_path / "first")

    settings = TrainSettings(epochs=1, batch_size=16, freeze=["image_encoder", "text_encoder"], seed=0)
    result = train(dataset, None, settings, init=init)
    save_checkpoint(result.model, tmp_path / "second")
    second = load_checkpoint(tmp_path / "second")
    assert second.config.trained_parts == ["image_encoder", "text_encoder"]
    for key, value in first.text_encoder.state_dict().items():
        torch.testing.assert_close(second.text_encoder.state_dict()[key], value, msg=key)


def test_finetune_holds_out_whole_groups_and_says_so(sixteen_rows, tmp_path):
    """With a group column the validation rows are whole groups; the record and the model card
    say how the split was made, and the out-of-scope fit sees the same split."""
    from mmdemo.datasets.splits import make_split
    from mmdemo.training.finetune import FinetuneRequest, finetune

    rows = list(csv.reader(open(sixteen_rows)))
    grouped = sixteen_rows.parent / "grouped.csv"
    with open(grouped, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(rows[0] + ["scene"])
        writer.writerows(r + [f"scene{int(Path(r[0]).stem) // 2}"] for r in rows[1:])
    dataset = read_csv(grouped, group_column="scene")
    request = FinetuneRequest(dataset, tmp_path / "m", _settings(epochs=1), config=tiny_config(), val_fraction=0.25)
    result = finetune(request)
    split = result.record["split"]
    assert split["method"] == "group column" and split["groups"] == 4
    expected = make_split(dataset, None, 0.25, 0)
    assert split["val_rows"] == len(expected.val) == 4
    assert {e.group for e in expected.val}.isdisjoint({e.group for e in expected.train})
    assert "whole groups of the group column held out" in (tmp_path / "m" / "README.md").read_text()


def test_time_left_after_the_planned_epochs_trains_more_epochs(sixteen_rows):
    ds = read_csv(sixteen_rows)
    planned = train(ds, ds, _settings(epochs=2, extend_epochs=True), config=tiny_config())  # no time limit
    extended = train(ds, ds, _settings(epochs=2, extend_epochs=True), config=tiny_config(), time_left=lambda: 3600.0)
    mine = train(ds, ds, _settings(epochs=2), config=tiny_config(), time_left=lambda: 3600.0)
    assert [h["epoch"] for h in mine.history] == [1, 2]  # epochs set explicitly are kept
    assert [h["epoch"] for h in planned.history] == [1, 2] and "extended" not in planned.stages[0]
    assert [h["epoch"] for h in extended.history] == [1, 2, 3, 4]
    assert extended.stages[0]["extended"]["epochs"] == [3, 4]
    # the first epochs are the planned run's, to the bit
    assert [h["train_loss"] for h in extended.history[:2]] == [h["train_loss"] for h in planned.history]
    tight = train(ds, ds, _settings(epochs=2, extend_epochs=True), config=tiny_config(), time_left=lambda: 0.0)
    assert [h["epoch"] for h in tight.history] == [1, 2]  # no time left: nothing more
