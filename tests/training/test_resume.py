"""Resume: a run stopped after an epoch and continued with ``resume`` ends with the same weights
as the same run left alone; the state is safetensors + JSON beside (not inside) the checkpoint;
the CLI and the app's job runner write the same training record."""

import json
from dataclasses import replace

import torch

from mmdemo.datasets.csv_table import read_csv
from mmdemo.model.checkpoint import load_checkpoint
from mmdemo.training.finetune import FinetuneRequest, finetune, resume, resume_dir
from mmdemo.training.settings import TrainSettings

from ..conftest import tiny_config
from .test_train import sixteen_rows  # noqa: F401  (fixture)


def _request(csv, out):
    settings = TrainSettings(epochs=4, batch_size=4, lr=3e-3, encoder_lr=3e-3, freeze=[], modality_dropout=0.2)
    ds = read_csv(csv)
    return FinetuneRequest(ds, out, settings, val_dataset=ds, config=tiny_config(dropout=0.1))


def test_resumed_run_matches_an_uninterrupted_one(sixteen_rows, tmp_path):  # noqa: F811
    full = finetune(_request(sixteen_rows, tmp_path / "full"))
    assert full.stopped_by is None and not resume_dir(tmp_path / "full").exists()

    epochs = []
    stopped = finetune(
        _request(sixteen_rows, tmp_path / "cut"),
        progress=lambda e: epochs.append(e) if e["stage"] == "epoch" else None,
        should_stop=lambda: len(epochs) >= 2,
    )
    assert stopped.stopped_by == "stop" and len(stopped.record["history"]) == 2
    state = resume_dir(tmp_path / "cut")
    assert sorted(p.name for p in state.iterdir()) == ["state.json", "state.safetensors"]
    assert not any(p.suffix in (".pt", ".pkl", ".bin") for p in (tmp_path / "cut").iterdir())

    resumed = resume(tmp_path / "cut")
    assert resumed.stopped_by is None
    assert [h["epoch"] for h in resumed.record["history"]] == [1, 2, 3, 4]
    assert [h["train_loss"] for h in resumed.record["history"]] == [h["train_loss"] for h in full.record["history"]]
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "cut")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert a.config.temperature == b.config.temperature
    assert not state.exists()


def test_resume_without_state_says_so(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="nothing to resume"):
        resume(tmp_path / "never-trained")


def test_cli_and_app_write_the_same_record(sixteen_rows, tmp_path, tiny_checkpoint):  # noqa: F811
    """The same data and seed through `train` (flags not given: the recipe) and through the
    Fine-tune tab's handler with Automatic settings (the app's job worker): the same recipe
    choices, settings and record keys."""
    import shutil
    import subprocess
    import sys

    from mmdemo.app.backend import App
    from mmdemo.app.registry import CheckpointRegistry, owner_id
    from mmdemo.ui.finetune import FinetuneTab

    shutil.copytree(tiny_checkpoint, tmp_path / "shipped" / "tiny")
    cli = [sys.executable, "-m", "mmdemo", "train", "--csv", str(sixteen_rows), "--out", str(tmp_path / "cli")]
    cli += ["--init", str(tmp_path / "shipped" / "tiny"), "--epochs", "3"]  # 3 epochs: a short test
    done = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    app = App(CheckpointRegistry(tmp_path / "app", tmp_path / "shipped"), work_dir=str(tmp_path / "work"))
    owner = owner_id("x" * 43)
    images = shutil.make_archive(str(tmp_path / "images"), "zip", root_dir=sixteen_rows.parent, base_dir="img")
    # the tab's Start with Automatic settings on and only the epochs set (as the CLI above)
    FinetuneTab(app).start(
        str(sixteen_rows), images, "image", "text", "label", "tiny", 3, None, None, None, 0.1, "app", False,
        owner, None,
    )  # fmt: skip
    status = app.jobs.wait(owner, 300)
    app.close()
    assert status["state"] == "done", status["message"]
    assert "estimated time on this machine" in status["plan"] and status["estimate_s"] > 0

    cli_record = json.loads((tmp_path / "cli" / "config.json").read_text())["training"]
    app_record = json.loads((app.registry.writable_dir / owner / "app" / "config.json").read_text())["training"]
    assert set(cli_record) - {"command", "csv"} == set(app_record)  # a command line also records its CSV
    for record in (cli_record, app_record):  # the recipe picks the threads from the load at the time
        record["settings"].pop("cpu_threads")
        record["recipe"].pop("cpu_threads")
    assert cli_record["recipe"] == app_record["recipe"]
    assert cli_record["recipe"]["epochs"] == {"value": 3, "why": "set explicitly"}
    assert cli_record["recipe"]["lr"]["why"] != "set explicitly"  # chosen by the recipe in both
    assert cli_record["settings"] == app_record["settings"]
    # each process scales the estimate by its own measurement of the machine (recipe.machine_speed)
    assert cli_record["estimated_seconds"] > 0 and app_record["estimated_seconds"] > 0
    assert set(cli_record["baselines"]) == set(app_record["baselines"])
    assert set(cli_record["calibration"]) == set(app_record["calibration"])


def test_resume_across_stages_matches_an_uninterrupted_run(sixteen_rows, tmp_path):  # noqa: F811
    """Stopped in stage 1, then in stage 2, resumed each time: the same weights as one run."""
    ds = read_csv(sixteen_rows)
    settings = TrainSettings(
        epochs=2, batch_size=4, lr=3e-3, freeze=["image_encoder"], modality_dropout=0.2, stage2_blocks=2,
        stage2_epochs=2, stage2_lr=3e-3, augment_views=2, augment_shift=0.1, augment_colour=0.2,
    )  # fmt: skip
    config = tiny_config(image_encoder="efficientnet_lite0", frozen=["image_encoder"])
    request = lambda out: FinetuneRequest(ds, out, settings, val_dataset=ds, config=config)  # noqa: E731
    full = finetune(request(tmp_path / "full"))
    assert [h["training_stage"] for h in full.record["history"]] == [1, 1, 2, 2]

    epochs = []
    count = lambda e: epochs.append(e) if e["stage"] == "epoch" else None  # noqa: E731
    finetune(request(tmp_path / "cut"), progress=count, should_stop=lambda: len(epochs) >= 1)
    resumed = resume(tmp_path / "cut", progress=count, should_stop=lambda: len(epochs) >= 3)
    assert resumed.stopped_by == "stop" and [h["training_stage"] for h in resumed.record["history"]] == [1, 1, 2]
    resumed = resume(tmp_path / "cut")
    assert resumed.stopped_by is None
    assert [h["train_loss"] for h in resumed.record["history"]] == [h["train_loss"] for h in full.record["history"]]
    assert resumed.record["stages"][1]["ran"] and full.record["stages"][1]["ran"]
    card = (tmp_path / "full" / "README.md").read_text()
    assert "## Stages" in card and "stage 2 (the top 2 blocks of the image encoder too): epochs 3-4" in card
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "cut")
    assert a.config.image_tuned_blocks == b.config.image_tuned_blocks
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_an_augmented_stage_1_resumes_exactly_and_trains_on_the_copies(sixteen_rows, tmp_path):  # noqa: F811
    """Stage 1 on zoomed, mirrored and blurred copies (each encoded once): stopped after an epoch
    and resumed, the same weights as one run; and not the weights of a run on the images as they are."""
    ds = read_csv(sixteen_rows)
    settings = TrainSettings(
        epochs=3, batch_size=4, lr=3e-3, freeze=["image_encoder", "text_encoder"], stage1_augment=True,
        augment_views=3, augment_zoom=0.6, augment_mirror=True, augment_blur=1.0,
    )  # fmt: skip
    config = tiny_config(image_encoder="efficientnet_lite0", frozen=["image_encoder", "text_encoder"])
    request = lambda out, s=settings: FinetuneRequest(ds, out, s, val_dataset=ds, config=config)  # noqa: E731
    full = finetune(request(tmp_path / "full"))
    epochs = []
    count = lambda e: epochs.append(e) if e["stage"] == "epoch" else None  # noqa: E731
    finetune(request(tmp_path / "cut"), progress=count, should_stop=lambda: len(epochs) >= 1)
    resumed = resume(tmp_path / "cut")
    assert [h["train_loss"] for h in resumed.record["history"]] == [h["train_loss"] for h in full.record["history"]]
    assert resumed.record["settings"]["stage1_augment"] and resumed.record["settings"]["augment_mirror"]
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "cut")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    plain = finetune(request(tmp_path / "plain", replace(settings, stage1_augment=False)))
    assert [h["train_loss"] for h in plain.record["history"]] != [h["train_loss"] for h in full.record["history"]]


def test_augmented_copies_are_made_only_when_the_time_left_allows(sixteen_rows, tmp_path):  # noqa: F811
    from mmdemo.training import distributed
    from mmdemo.training.loop import COPIES_SHARE, _stage1_copies

    settings = TrainSettings(freeze=["image_encoder", "text_encoder"], stage1_augment=True, augment_views=4)
    assert _stage1_copies(settings, 10.0, None, distributed.SINGLE) == {"copies": 4}
    assert _stage1_copies(settings, 10.0, lambda: 40 / COPIES_SHARE, distributed.SINGLE) == {"copies": 4}
    short = _stage1_copies(settings, 10.0, lambda: 60.0, distributed.SINGLE)
    assert short["copies"] == 1 and "about 40 s of the 60 s left" in short["why"]
    assert _stage1_copies(replace(settings, stage1_augment=False), 10.0, None, distributed.SINGLE) == {"copies": 1}
    assert _stage1_copies(settings, 10.0, None, distributed.SINGLE, cacheable=False)["copies"] == 1
    # a small CNN asked for copies trains on the images as they are
    from mmdemo.training.loop import train as train_loop

    small = train_loop(read_csv(sixteen_rows), None, replace(settings, epochs=1, batch_size=4), config=tiny_config())
    assert small.stages[0]["augmented_copies"]["copies"] == 1 and len(small.history) == 1
    # a real run whose budget is nearly spent after encoding trains on the images as they are, and says so
    from mmdemo.training.loop import train

    ds = read_csv(sixteen_rows)
    config = tiny_config(image_encoder="efficientnet_lite0", frozen=["image_encoder", "text_encoder"])
    events = []
    result = train(
        ds, ds, replace(settings, epochs=1, batch_size=4), config=config, progress=events.append, time_left=lambda: 1e-3
    )
    assert result.stages[0]["augmented_copies"]["copies"] == 1
    assert any("no augmented copies: making 4" in e.get("message", "") for e in events)
    assert len(result.history) == 1
