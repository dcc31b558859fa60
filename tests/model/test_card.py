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
