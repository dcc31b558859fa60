"""The in-app model card is rendered from a checkpoint's config.json alone."""

import json
from pathlib import Path

from mmdemo.model.card import app_model_card

CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "sort-of-clevr"


def test_card_of_the_shipped_checkpoint():
    data = json.loads((CHECKPOINT / "config.json").read_text())
    card = app_model_card("sort-of-clevr", data)
    assert "**Answers (12)**: 1, 2, 3, 4, 5, 6, bottom, circle, left, right, square, top" in card
    assert "blue, gray, green, orange, red, yellow" in card  # what a question must name
    assert "| closest | 93.8 % |" in card  # accuracy per question kind from the benchmark record
    assert "#### Calibration" in card and f"Temperature {data['model']['temperature']}" in card
    assert "| raw | 94.1 % |" in card  # pointing
    # faithfulness of both methods, as bench-sort-of-clevr recorded it beside the weights
    faithfulness = data["training"]["benchmark"]["faithfulness"]
    assert "#### Faithfulness of the heatmaps" in card and f"On {faithfulness['rows']} questions" in card
    for method in ("raw", "gradient"):
        f = faithfulness[method]
        assert (
            f"| {method} | {f['deletion_auc']} | {f['random_deletion_auc']} | {f['insertion_auc']} | "
            f"{f['randomisation_rank_correlation']} |"
        ) in card
        assert f["deletion_auc"] < f["random_deletion_auc"]  # the hottest cells matter more than random ones
        assert f["randomisation_rank_correlation"] < 0.5  # the heatmap changes with the weights


def test_card_without_records_or_scope():
    card = app_model_card("tiny", {"model": {"labels": ["a", "b"], "image_size": 32}, "training": {}})
    assert "**Answers (2)**: a, b" in card and "not fitted for this checkpoint" in card
    assert "####" not in card  # no figures claimed that were never measured


def _two_task_data() -> dict:
    """config.json of a model of two tasks, with the training record a multi-task run writes."""
    from ..evaluation.test_tasks import two_task_config

    model = two_task_config().to_dict()
    model["temperature"] = 0.8
    calibrated = lambda ece: {"temperature": 1.0, "ece_before": 0.2, "ece_after": ece}  # noqa: E731
    tasks = {
        "colour": {"labels": ["blue", "red"], "rows_without_label": 0, "calibration": calibrated(0.0312),
                   "metrics": {"val_accuracy": 0.9375, "val_macro_f1": 0.9, "report": {}}},
        "place": {"labels": ["left", "middle", "right"], "rows_without_label": 3, "calibration": calibrated(0.0567),
                  "metrics": {"val_accuracy": 0.625, "val_macro_f1": 0.5, "report": {}}},
    }  # fmt: skip
    training = {"metrics": {"val_accuracy": 0.9375, "tasks": {"colour": {}, "place": {}}}, "tasks": tasks}
    return {"model": model, "training": training, "base_weights": {}}


def test_cards_of_a_model_of_several_tasks_list_each_task():
    from mmdemo.model.checkpoint import model_card

    data = _two_task_data()
    card = app_model_card("two-tasks", data)
    assert "**Tasks (2)**" in card and "**Answers" not in card
    assert "- **place** (3): left, middle, right" in card
    assert "| colour | blue, red | 93.8 % | 0.9000 | 0.0312 | 0.800 |" in card
    assert "| place | left, middle, right | 62.5 % | 0.5000 | 0.0567 | 1.500 |" in card

    readme = model_card("two-tasks", data)
    assert "- Tasks (2), one head each:" in readme and "  - place: labels (3): left, middle, right" in readme
    assert "## Tasks" in readme and "| place | left, middle, right | 62.5 % | 0.5000 | 0.0567 | 1.500 |" in readme
    assert "- place: 3 training rows had no label for it" in readme
    assert "- tasks:" not in readme and "| tasks |" not in readme  # not dumped as a dict


def test_cards_of_a_model_of_one_task_name_no_task():
    from mmdemo.model.checkpoint import model_card

    data = {"model": {"labels": ["a", "b"], "image_size": 32}, "training": {}}
    assert "Tasks" not in app_model_card("tiny", data)
    config = json.loads((CHECKPOINT / "config.json").read_text())
    readme = model_card("sort-of-clevr", config)
    assert "- Labels (12): 1, 2, 3" in readme and "Tasks" not in readme
