"""Renderers: overlays and charts from results (pure functions)."""

import numpy as np
import torch
from PIL import Image

from mmdemo.explain import render


def test_overlay_puts_the_heat_where_the_map_peaks():
    image = Image.new("RGB", (400, 200), (128, 128, 128))
    grid = torch.zeros(2, 4)
    grid[0, 3] = 1.0  # top-right cell
    out = np.asarray(render.overlay(image, grid, opacity=0.8))
    assert out.shape == (200, 400, 3)
    hot, cold = out[40, 370].astype(int), out[160, 30].astype(int)
    assert hot[0] + hot[1] > cold[0] + cold[1] + 150  # yellow-ish over the peak, dark blue elsewhere
    assert tuple(render.overlay(image, grid, opacity=0.0).getpixel((10, 10))) == (128, 128, 128)


def test_overlay_marks_the_peak_and_caps_large_images():
    image = Image.new("RGB", (3000, 1500), (255, 255, 255))
    out = render.overlay(image, torch.rand(7, 7), 0.5, peak_xy=(1500, 750))
    assert out.size == (768, 384)
    assert out.getpixel((384, 192)) == (255, 0, 255)
    assert render.overlay(Image.new("RGB", (75, 75)), torch.rand(8, 8)).size == (384, 384)  # small scenes enlarged


def test_charts():
    fig = render.attention_matrix(["red", "cube"], torch.rand(2, 4), (2, 2))
    assert np.shape(fig["data"][0]["z"]) == (2, 4) and fig["data"][0]["y"] == ["1. red", "2. cube"]
    fig = render.modality_chart(
        {"both": {"a": 0.7, "b": 0.3}, "image only": {"a": 0.5, "b": 0.5}, "text only": {"a": 0.2, "b": 0.8}}
    )
    assert [t["name"] for t in fig["data"]] == ["both", "image only", "text only"] and fig["data"][0]["x"] == ["a", "b"]
    history = [
        {"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "train_accuracy": 0.5, "val_accuracy": 0.4},
        {"epoch": 2, "train_loss": 0.5, "val_loss": 0.7, "train_accuracy": 0.8, "val_accuracy": 0.7},
    ]
    fig = render.training_curves(history)
    assert {t.name for t in fig.data} == {"train loss", "validation loss", "train accuracy", "validation accuracy"}
    fig = render.confusion_figure({"labels": ["a", "b"], "matrix": [[3, 1], [0, 4]]})
    assert fig.data[0].z == ((3, 1), (0, 4)) or np.array(fig.data[0].z).tolist() == [[3, 1], [0, 4]]


def test_reliability_figure_draws_before_and_after():
    from mmdemo.training.calibration import calibration_report

    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 3, (300,), generator=g)
    logits = torch.randn(300, 3, generator=g) * 5
    fig = render.reliability_figure(calibration_report(logits, targets, 4.0))
    names = [t.name for t in fig.data]
    assert names[0] == "perfectly calibrated" and names[1].startswith("before (ECE") and names[2].startswith("after")
    assert all(0 <= x <= 1 for x in fig.data[1].x)


def test_word_maps_grid_has_a_tile_per_word_and_frames_the_selected_one():
    image = Image.new("RGB", (75, 75), (255, 255, 255))
    maps = torch.rand(3, 8, 8)
    sheet = render.word_maps_grid(image, ["a", "b", "c"], maps, torch.rand(8, 8), selected=None, columns=2)
    cell_w, cell_h = render.TILE_SIDE + 12, render.TILE_SIDE + 22 + 12
    assert sheet.size == (2 * cell_w, 2 * cell_h)  # whole question + 3 words, 2 per row
    assert sheet.getpixel((2, 2)) == render.SELECTED  # the whole question's tile is framed
    picked = render.word_maps_grid(image, ["a", "b", "c"], maps, torch.rand(8, 8), selected=2, columns=2)
    assert picked.getpixel((2, 2)) != render.SELECTED
    assert picked.getpixel((cell_w + 2, cell_h + 2)) == render.SELECTED  # word 3 = tile 4


def test_region_grid_and_matrix_label_every_region_and_word():
    picture = render.region_grid(Image.new("RGB", (75, 75), (255, 255, 255)), (8, 8), side=240)
    assert picture.size == (240, 240)
    assert np.asarray(picture)[:, 30].min() < 128  # a grid line at x = 30 (240 / 8)
    words = ["what", "shape", "is", "the", "red", "object", "the", "?"]
    fig = render.attention_matrix(words, torch.rand(8, 64), (8, 8))
    trace = fig["data"][0]
    assert trace["y"] == [f"{i + 1}. {w}" for i, w in enumerate(words)]  # every word, repeats kept apart
    assert fig["layout"]["yaxis"]["ticktext"] == trace["y"]
    assert trace["x"] == list(range(1, 65))


def test_plotly_json_is_what_a_plotly_figure_serialises():
    """The charts drawn on every /predict skip go.Figure; what the browser gets must not change:
    the same data and layout, with plotly's default template."""
    import json

    import plotly.graph_objects as go

    for fig in (
        render.attention_matrix(["red", "cube"], torch.rand(2, 4), (2, 2)),
        render.modality_chart({"both": {"a": 0.7, "b": 0.3}, "image only": {"a": 0.5, "b": 0.5}}),
    ):
        ours = json.loads(render.plotly_json(fig))
        theirs = json.loads(go.Figure(fig).to_json())
        assert ours["layout"] == theirs["layout"]  # the template included
        for a, b in zip(ours["data"], theirs["data"]):
            a.pop("colorscale", None), b.pop("colorscale", None)  # plotly expands a named scale; plotly.js knows it
            assert a == b


def test_a_small_scene_stays_crisp_in_the_overlay_and_sizes_the_word_map_tiles():
    image = Image.new("RGB", (75, 75), (255, 255, 255))
    image.putpixel((10, 10), (255, 0, 0))
    out = np.asarray(render.overlay(image, torch.zeros(8, 8), 0.0))
    scale = 384 / 75
    # the red pixel is a block of whole pixels (nearest), not smeared into its neighbours
    block = out[round(10 * scale) : round(11 * scale), round(10 * scale) : round(11 * scale)]
    assert (block == (255, 0, 0)).all()
    sheet = render.word_maps_grid(image, ["a"], torch.rand(1, 8, 8), torch.rand(8, 8))
    assert sheet.size == (2 * (render.TILE_SIDE + 12), render.TILE_SIDE + 22 + 12)


def test_overlay_outlines_boxes_and_captions_them_below():
    image = Image.new("RGB", (75, 75), (255, 255, 255))
    boxes = [((10, 10, 20, 20), render.REFERENCE, "referenced"), ((40, 40, 50, 50), render.ANSWER, "answer")]
    out = render.overlay(image, torch.zeros(8, 8), 0.0, None, boxes)
    assert out.width == 384 and out.height > 384  # a legend strip per box below the picture
    scale = 384 / 75
    assert out.getpixel((round(10 * scale) - 3, round(15 * scale))) == render.REFERENCE
    assert out.getpixel((round(40 * scale) - 3, round(45 * scale))) == render.ANSWER
