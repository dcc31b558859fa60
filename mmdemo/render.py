"""Pictures and charts for the UI: pure functions from results to PIL images / Plotly figures.

No gradio here, so they are testable without a server.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch
from PIL import Image

from .explain import upsample

MAX_OVERLAY_SIDE = 768  # overlays are drawn at most this large; the browser scales them
MIN_OVERLAY_SIDE = 384  # small images (a 75 px scene) are enlarged so the heatmap is visible


def _ramp(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB uint8 with a perceptual dark-blue -> yellow ramp (viridis-like)."""
    stops = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)
    x = np.clip(values, 0, 1) * (len(stops) - 1)
    lo = np.floor(x).astype(int).clip(0, len(stops) - 2)
    t = (x - lo)[..., None]
    return (stops[lo] * (1 - t) + stops[lo + 1] * t).astype(np.uint8)


# the ramp at 1024 levels, looked up per pixel: interpolating per pixel cost ~10x more, and a
# 384 px overlay is drawn on every /predict
_LEVELS = 1023
_LUT = _ramp(np.linspace(0, 1, _LEVELS + 1, dtype=np.float32))


def _colormap(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB uint8 (the ramp above, to 1/1023)."""
    return _LUT[(np.clip(values, 0, 1) * _LEVELS + 0.5).astype(np.intp)]


def overlay(
    image: Image.Image, grid_map: torch.Tensor, opacity: float = 0.5, peak_xy: tuple[float, float] | None = None
) -> Image.Image:
    """The heatmap upsampled to the image and blended over it; the peak marked with a cross."""
    longest = max(image.size)
    scale = MAX_OVERLAY_SIDE / longest if longest > MAX_OVERLAY_SIDE else max(1.0, MIN_OVERLAY_SIDE / longest)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    base = image.convert("RGB")
    if base.size != size:
        base = base.resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR)
    heat = upsample(grid_map, (size[1], size[0])).numpy()
    colours = _colormap(heat).astype(np.float32)
    alpha = float(np.clip(opacity, 0, 1)) * (0.35 + 0.65 * heat[..., None])
    pixels = np.asarray(base, dtype=np.float32)
    blended = pixels + (colours - pixels) * alpha  # = pixels * (1 - alpha) + colours * alpha
    out = blended.clip(0, 255).astype(np.uint8)
    if peak_xy is not None:
        x, y = round(peak_xy[0] * scale), round(peak_xy[1] * scale)
        r = max(3, min(size) // 40)
        for dx in range(-r, r + 1):
            for px, py in ((x + dx, y), (x, y + dx)):
                if 0 <= px < size[0] and 0 <= py < size[1]:
                    out[py, px] = (255, 0, 255)
    return Image.fromarray(out)


def attention_matrix(words: list[str], token_region: torch.Tensor, grid: tuple[int, int]) -> go.Figure:
    """Token x region relevance as a heatmap (regions numbered row by row)."""
    h, w = grid
    z = token_region.numpy() if len(words) else np.zeros((0, h * w))
    labels = [f"r{r},c{c}" for r in range(h) for c in range(w)]
    # built as plain dicts without plotly's per-property validation (~4x cheaper, and drawn on
    # every /predict); the values are ours, so there is nothing to validate
    trace = {"type": "heatmap", "z": z, "x": labels, "y": words, "colorscale": "Viridis"}
    trace["colorbar"] = {"title": {"text": "relevance"}}
    layout = {
        "title": {"text": "Word x image-region relevance"},
        "xaxis": {"title": {"text": "image region (row, column)"}},
        "yaxis": {"autorange": "reversed"},
        "height": max(260, 40 + 24 * len(words)),
        "margin": {"l": 10, "r": 10, "t": 40, "b": 10},
    }
    return go.Figure({"data": [trace], "layout": layout}, _validate=False)


def modality_chart(contributions: dict[str, dict[str, float]], top: int = 5) -> go.Figure:
    """Grouped bars: probability of the top labels with both modalities, image only, text only."""
    both = contributions["both"]
    labels = sorted(both, key=both.get, reverse=True)[:top]
    data = [
        {"type": "bar", "name": name, "x": labels, "y": [probs[label] for label in labels]}
        for name, probs in contributions.items()
    ]
    layout = {
        "title": {"text": "What each modality contributes"},
        "barmode": "group",
        "yaxis": {"title": {"text": "probability"}, "range": [0, 1]},
        "height": 300,
        "margin": {"l": 10, "r": 10, "t": 40, "b": 10},
    }
    return go.Figure({"data": data, "layout": layout}, _validate=False)  # as above: no validation


def deletion_chart(curves: dict) -> go.Figure:
    """Probability of the answer as the hottest cells are blanked, against a random order, and
    as they are put back onto a blank image (faithfulness.curves)."""
    x = curves["fractions"]
    fig = go.Figure(
        [
            go.Scatter(x=x, y=curves["deletion"], name=f"deletion, hottest first (area {curves['deletion_auc']:.3f})"),
            go.Scatter(
                x=x,
                y=curves["random_deletion"],
                name=f"deletion, random order (area {curves['random_deletion_auc']:.3f})",
            ),
            go.Scatter(
                x=x, y=curves["insertion"], name=f"insertion, hottest first (area {curves['insertion_auc']:.3f})"
            ),
        ]
    )
    fig.update_layout(
        title="Deletion curve: does the heatmap point at what the answer depends on?",
        xaxis={"title": "fraction of regions blanked / inserted", "range": [0, 1]},
        yaxis={"title": "probability of the answer", "range": [0, 1]},
        height=320,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
    )
    return fig


def training_curves(history: list[dict]) -> go.Figure:
    """Loss and accuracy per epoch, train and validation."""
    epochs = [h["epoch"] for h in history]
    fig = go.Figure()
    for key, name, axis in (
        ("train_loss", "train loss", "y"),
        ("val_loss", "validation loss", "y"),
        ("train_accuracy", "train accuracy", "y2"),
        ("val_accuracy", "validation accuracy", "y2"),
    ):
        if any(key in h for h in history):
            fig.add_trace(
                go.Scatter(x=epochs, y=[h.get(key) for h in history], name=name, yaxis=axis, mode="lines+markers")
            )
    fig.update_layout(
        title="Training curves",
        xaxis_title="epoch",
        yaxis={"title": "loss"},
        yaxis2={"title": "accuracy", "overlaying": "y", "side": "right", "range": [0, 1]},
        height=320,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend={"orientation": "h"},
    )
    return fig


def confusion_figure(confusion: dict) -> go.Figure:
    labels, matrix = confusion["labels"], confusion["matrix"]
    fig = go.Figure(go.Heatmap(z=matrix, x=labels, y=labels, colorscale="Blues", text=matrix, texttemplate="%{text}"))
    fig.update_layout(
        title="Confusion matrix (validation)",
        xaxis_title="predicted",
        yaxis_title="true",
        yaxis_autorange="reversed",
        height=max(300, 60 + 28 * len(labels)),
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
    )
    return fig


def reliability_figure(calibration: dict) -> go.Figure:
    """Reliability diagram: accuracy against mean confidence per confidence bin, before and
    after temperature scaling (``calibration`` as calibration.calibration_report returns it, or
    an evaluate report's single ``reliability``); the diagonal is perfect calibration."""
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], name="perfectly calibrated", mode="lines", line={"dash": "dot"}))
    curves = [("reliability_before", "before"), ("reliability_after", "after")]
    if "reliability" in calibration:
        curves = [("reliability", "model")]
    for key, name in curves:
        r = calibration.get(key)
        if not r:
            continue
        points = [(c, a, n) for c, a, n in zip(r["confidence"], r["accuracy"], r["count"]) if n]
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in points],
                y=[p[1] for p in points],
                text=[f"{p[2]} rows" for p in points],
                name=f"{name} (ECE {r['ece']:.3f})",
                mode="lines+markers",
            )
        )
    fig.update_layout(
        title="Reliability (validation)",
        xaxis={"title": "confidence", "range": [0, 1]},
        yaxis={"title": "accuracy", "range": [0, 1]},
        height=320,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend={"orientation": "h"},
    )
    return fig
