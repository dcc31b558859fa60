"""The service object behind the UI: what a checkpoint can answer, which checkpoint to start a
fine-tune from, and the job status line."""

import json

from mmdemo.app.backend import App, label_overlap
from mmdemo.app.registry import CheckpointRegistry
from mmdemo.datasets.sortofclevr import task_spec
from mmdemo.model.checkpoint import save_checkpoint
from mmdemo.model.classifier import build_model

from ..conftest import tiny_config


def test_label_overlap_picks_the_checkpoint_that_knows_most_labels():
    candidates = {"shapes": ["circle", "square", "left", "right"], "animals": ["cat", "dog"]}
    assert label_overlap(["circle", "square"], candidates) == "shapes"
    assert label_overlap(["cat", "dog", "bird"], candidates) == "animals"  # 2 of 3
    assert label_overlap(["cat", "car", "bus"], candidates) is None  # under half known: a new model
    assert label_overlap([], candidates) is None


def test_capabilities_and_suggested_base_come_from_the_shipped_configs(tmp_path):
    path = save_checkpoint(build_model(tiny_config(labels=["circle", "square", "1", "2"])), tmp_path / "shipped" / "s")
    config = json.loads((path / "config.json").read_text())
    config["task"] = task_spec()
    (path / "config.json").write_text(json.dumps(config))
    app = App(CheckpointRegistry(tmp_path / "mine", tmp_path / "shipped"), work_dir=str(tmp_path / "work"))
    owner = app.owner(app.new_token())  # a visitor's own checkpoint: the visitor's folder
    save_checkpoint(build_model(tiny_config(labels=["cat", "dog"])), tmp_path / "mine" / owner / "pets")
    labels, task, benchmark = app.capabilities("s")
    assert labels == ["circle", "square", "1", "2"] and benchmark == {}
    assert [q["kind"] for q in task["questions"]] == ["shape", "horizontal", "vertical", "closest", "furthest", "count"]
    assert task["slot"]["values"] == ["red", "green", "blue", "orange", "gray", "yellow"]
    assert app.capabilities("pets", owner)[1] == {}
    assert app.suggest_base(["circle", "square"]) == "s"
    assert app.suggest_base(["cat", "dog"]) is None  # only shipped checkpoints are suggested


def test_the_shipped_checkpoint_says_what_it_can_answer(tmp_path):
    from mmdemo.app.registry import REPO_CHECKPOINTS

    app = App(CheckpointRegistry(tmp_path / "mine", REPO_CHECKPOINTS), work_dir=str(tmp_path / "work"))
    labels, task, benchmark = app.capabilities("sort-of-clevr")
    assert len(labels) == 12 and task == task_spec()
    assert benchmark["pointing"]["raw"]["closest_furthest"]["closest"]["on_reference"] > 0.5
