"""Pictures and charts for the UI: pure functions from results to PIL images / Plotly figures.

No gradio here, so they are testable without a server. The Predict tab's two charts are drawn
on every /predict, which has a latency budget: they are plain figure dicts serialised by
``plotly_json`` (a ``go.Figure`` copies plotly's whole default template into each figure and
serialises it through its validators, many times the cost of the dicts: ``python -m mmdemo
bench-app --stages`` times each chart).
"""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .methods import upsample

MAX_OVERLAY_SIDE = 768  # overlays are drawn at most this large; the browser scales them
MIN_OVERLAY_SIDE = 384  # small images (a 75 px scene) are enlarged so the heatmap is visible
TILE_SIDE = 112  # one small-multiples tile (a word's map)
SELECTED = (255, 0, 255)  # the selected word's tile, the heatmap peak
REFERENCE, ANSWER = (255, 0, 255), (0, 200, 255)  # boxes of a relational question's two objects


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _fitted_size(size: tuple[int, int], side: int) -> tuple[int, int]:
    """(width, height) scaled so that the longest side is ``side``."""
    scale = side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _fit(image: Image.Image, side: int) -> Image.Image:
    """The image scaled so its longest side is ``side``: nearest-neighbour when enlarging (a
    75 px scene stays crisp), bilinear when shrinking."""
    size = _fitted_size(image.size, side)
    base = image.convert("RGB")
    return base if base.size == size else base.resize(size, Image.NEAREST if side > max(image.size) else Image.BILINEAR)


def _blend(base: Image.Image, grid_map: torch.Tensor, opacity: float) -> np.ndarray:
    heat = upsample(grid_map, (base.height, base.width)).numpy()
    colours = _colormap(heat).astype(np.float32)
    alpha = float(np.clip(opacity, 0, 1)) * (0.35 + 0.65 * heat[..., None])
    pixels = np.asarray(base, dtype=np.float32)
    blended = pixels + (colours - pixels) * alpha  # = pixels * (1 - alpha) + colours * alpha
    return blended.clip(0, 255).astype(np.uint8)


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
    image: Image.Image,
    grid_map: torch.Tensor,
    opacity: float = 0.5,
    peak_xy: tuple[float, float] | None = None,
    boxes: list[tuple[tuple[float, float, float, float], tuple[int, int, int], str]] = (),
) -> Image.Image:
    """The heatmap upsampled to the image and blended over it; the peak marked with a cross;
    ``boxes`` ((x0, y0, x1, y1) in image pixels, colour, caption) outlined with their captions.

    The picture is drawn between MIN_OVERLAY_SIDE and MAX_OVERLAY_SIDE; a small image is blended
    at its own size and then enlarged whole-pixel (a 75 px scene: 26x fewer pixels to blend than
    at 384 px, and /predict draws one per call)."""
    longest = max(image.size)
    scale = MAX_OVERLAY_SIDE / longest if longest > MAX_OVERLAY_SIDE else max(1.0, MIN_OVERLAY_SIDE / longest)
    side = round(longest * scale)
    scale = side / longest  # the scale the drawn size really has, for the marks below
    blended = Image.fromarray(_blend(_fit(image, min(side, longest)), grid_map, opacity))
    picture = blended.resize(_fitted_size(image.size, side), Image.NEAREST) if side > longest else blended
    size = picture.size
    if peak_xy is not None:
        x, y = round(peak_xy[0] * scale), round(peak_xy[1] * scale)
        r = max(3, min(size) // 40)
        draw = ImageDraw.Draw(picture)
        draw.line([(x - r, y), (x + r, y)], fill=SELECTED, width=1)
        draw.line([(x, y - r), (x, y + r)], fill=SELECTED, width=1)
    if not boxes:
        return picture
    # boxes outlined on the picture, their captions in a legend strip below it (captions on
    # the picture would cover each other when the objects are close)
    font = _font(max(13, min(size) // 24))
    strip = font.size + 12
    framed = Image.new("RGB", (size[0], size[1] + strip * len(boxes)), (255, 255, 255))
    framed.paste(picture, (0, 0))
    draw = ImageDraw.Draw(framed)
    for i, ((x0, y0, x1, y1), colour, caption) in enumerate(boxes):
        box = [round(x0 * scale) - 3, round(y0 * scale) - 3, round(x1 * scale) + 2, round(y1 * scale) + 2]
        draw.rectangle(box, outline=colour, width=3)
        top = size[1] + i * strip + 6
        draw.rectangle([8, top, 8 + font.size, top + font.size], outline=colour, width=3)
        draw.text((16 + font.size, top), caption, fill=(20, 20, 20), font=font)
    return framed


def word_maps_grid(
    image: Image.Image,
    words: list[str],
    word_maps: torch.Tensor,
    heatmap: torch.Tensor,
    selected: int | None = None,
    opacity: float = 0.55,
    columns: int = 3,
) -> Image.Image:
    """Small multiples: the whole question's map, then every word's own map, in one picture;
    the selected word's tile framed. One composed image, so the browser loads one file; all
    maps are upsampled and blended in one batch, at the image's own size when it is smaller than
    a tile (then enlarged whole-pixel, as the overlay): the Predict tab has a latency budget."""
    names = ["whole question", *words]
    tile_size = _fitted_size(image.size, TILE_SIDE)
    base = _fit(image, min(TILE_SIDE, max(image.size)))
    maps = torch.cat([heatmap[None].float(), word_maps.float().reshape(-1, *heatmap.shape)])  # (1 + N, h, w)
    heat = F.interpolate(maps[:, None], size=(base.height, base.width), mode="bilinear", align_corners=False)
    heat = heat[:, 0].clamp(0, 1).numpy()  # (1 + N, H, W)
    alpha = float(np.clip(opacity, 0, 1)) * (0.35 + 0.65 * heat[..., None])
    tiles = (np.asarray(base, dtype=np.float32) * (1 - alpha) + _colormap(heat) * alpha).clip(0, 255).astype(np.uint8)
    caption_h, pad = 22, 6
    cell_w, cell_h = tile_size[0] + 2 * pad, tile_size[1] + caption_h + 2 * pad
    columns = max(1, min(columns, len(names)))
    rows = -(-len(names) // columns)
    picture = Image.new("RGB", (columns * cell_w, rows * cell_h), (255, 255, 255))
    # the tiles stacked in one column and enlarged at once (whole pixels: no tile bleeds into the next)
    tw, th = tile_size
    stack = Image.fromarray(tiles.reshape(-1, base.width, 3))
    stack = stack if base.size == tile_size else stack.resize((tw, len(tiles) * th), Image.NEAREST)
    for i in range(len(tiles)):
        picture.paste(
            stack.crop((0, i * th, tw, (i + 1) * th)), ((i % columns) * cell_w + pad, (i // columns) * cell_h + pad)
        )
    draw = ImageDraw.Draw(picture)
    framed = 0 if selected is None else selected + 1
    for i, word in enumerate(names):
        x, y = (i % columns) * cell_w, (i // columns) * cell_h
        text = word if len(word) <= 16 else word[:15] + "…"
        colour = SELECTED if i == framed else (20, 20, 20)
        picture.paste(_caption(text, colour, cell_w, caption_h), (x, y + pad + tile_size[1]))
        if i == framed:
            draw.rectangle([x + 1, y + 1, x + cell_w - 2, y + cell_h - 2], outline=SELECTED, width=4)
    return picture


@lru_cache(maxsize=512)
def _caption(text: str, colour: tuple[int, int, int], width: int, height: int) -> Image.Image:
    """A tile's caption, centred on white; cached: drawing text is most of a sheet's cost, and
    questions repeat their words."""
    strip = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(strip).text((width // 2, 2), text, fill=colour, font=_font(16), anchor="ma")
    return strip


def region_grid(image: Image.Image, grid: tuple[int, int], side: int = 240) -> Image.Image:
    """The image with the model's region grid drawn on it, each cell numbered as in the word x
    region matrix (row by row, from 1), so a column of the matrix maps back to the picture."""
    picture = _fit(image, side).convert("RGBA")
    picture.alpha_composite(_grid_layer(picture.size, tuple(grid)))
    return picture.convert("RGB")


@lru_cache(maxsize=8)
def _grid_layer(size: tuple[int, int], grid: tuple[int, int]) -> Image.Image:
    """Grid lines and cell numbers on a transparent layer (the same for every image of a size)."""
    h, w = grid
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    cw, ch = size[0] / w, size[1] / h
    for c in range(1, w):
        draw.line([(round(c * cw), 0), (round(c * cw), size[1])], fill=(90, 90, 90, 255), width=1)
    for r in range(1, h):
        draw.line([(0, round(r * ch)), (size[0], round(r * ch))], fill=(90, 90, 90, 255), width=1)
    font = _font(max(8, min(14, int(min(cw, ch) * 0.45))))
    for r in range(h):
        for c in range(w):
            xy = ((c + 0.5) * cw, (r + 0.5) * ch)
            draw.text(
                xy,
                str(r * w + c + 1),
                fill=(0, 0, 0, 255),
                font=font,
                anchor="mm",
                stroke_width=2,
                stroke_fill=(255, 255, 255, 255),
            )
    return layer


def attention_matrix(words: list[str], token_region: torch.Tensor, grid: tuple[int, int]) -> dict:
    """Word x region relevance as a heatmap figure (plain dict, see ``plotly_json``): one row per
    word (every word labelled, repeated words numbered), one column per region, numbered row by
    row from 1 as ``region_grid`` draws."""
    h, w = grid
    z = token_region.float().numpy().round(4).tolist() if len(words) else []
    rows = [f"{i + 1}. {word}" for i, word in enumerate(words)]  # unique, so no two rows merge
    regions = list(range(1, h * w + 1))
    hover = [
        [f"{row}<br>region {r} (row {(r - 1) // w + 1}, column {(r - 1) % w + 1})" for r in regions] for row in rows
    ]
    trace = {
        "type": "heatmap",
        "z": z,
        "x": regions,
        "y": rows,
        "text": hover,
        "hovertemplate": "%{text}<br>relevance %{z:.3f}<extra></extra>",
        "colorscale": "Viridis",
        "colorbar": {"title": {"text": "relevance"}, "thickness": 12},
    }
    layout = {
        "xaxis": {"title": {"text": "image region (numbered as in the grid picture)"}, "dtick": w, "tick0": 1},
        "yaxis": {"autorange": "reversed", "tickmode": "array", "tickvals": rows, "ticktext": rows, "automargin": True},
        "height": max(260, 110 + 22 * len(words)),
        "margin": {"l": 10, "r": 10, "t": 36, "b": 10},
    }
    return {"data": [trace], "layout": layout}


def modality_chart(contributions: dict[str, dict[str, float]], top: int = 5) -> dict:
    """Grouped bars (plain figure dict, see ``plotly_json``): probability of the top labels with
    both modalities, image only, text only."""
    both = contributions["both"]
    labels = sorted(both, key=both.get, reverse=True)[:top]
    data = [
        {"type": "bar", "name": name, "x": labels, "y": [round(probs[label], 4) for label in labels]}
        for name, probs in contributions.items()
    ]
    layout = {  # no title: on a phone it collides with the toolbar; the component's label names it
        "barmode": "group",
        "yaxis": {"title": {"text": "probability"}, "range": [0, 1]},
        "height": 340,
        "margin": {"l": 10, "r": 10, "t": 36, "b": 10},
        "legend": {"orientation": "h", "yanchor": "top", "y": -0.15, "x": 0},
    }
    return {"data": data, "layout": layout}


@lru_cache(maxsize=1)
def _default_template() -> str:
    """Plotly's default template as JSON, built once (~0.1 s): the look every go.Figure gets."""
    import plotly.io as pio

    return json.dumps(pio.templates[pio.templates.default].to_plotly_json())


def plotly_json(figure: dict) -> str:
    """A figure of plain dicts ({"data": [...], "layout": {...}}, plain JSON values) as the JSON a
    Plotly chart reads, with plotly's default template: what ``go.Figure(figure).to_json()``
    gives, without its validation and template copy."""
    layout = json.dumps(figure.get("layout", {}))
    template = '"template": ' + _default_template()
    layout = "{" + template + "}" if layout == "{}" else "{" + template + ", " + layout[1:]
    return '{"data": ' + json.dumps(figure["data"]) + ', "layout": ' + layout + "}"


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
        xaxis={"title": "fraction of regions blanked / inserted", "range": [0, 1]},
        yaxis={"title": "probability of the answer", "range": [0, 1]},
        height=360,
        margin={"l": 10, "r": 10, "t": 36, "b": 10},
        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0},
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
    tasks = list(dict.fromkeys(t for h in history for t in h.get("tasks", {})))
    for task in tasks if len(tasks) > 1 else ():  # a model of several tasks: each task's validation accuracy
        fig.add_trace(
            go.Scatter(
                x=epochs,
                y=[h.get("tasks", {}).get(task, {}).get("val_accuracy") for h in history],
                name=f"validation accuracy: {task}",
                yaxis="y2",
                mode="lines+markers",
                line={"dash": "dot"},
            )
        )
    fig.update_layout(
        xaxis_title="epoch",
        yaxis={"title": "loss"},
        yaxis2={"title": "accuracy", "overlaying": "y", "side": "right", "range": [0, 1]},
        height=380,
        margin={"l": 10, "r": 10, "t": 36, "b": 10},
        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0},
    )
    return fig


def confusion_figure(confusion: dict) -> go.Figure:
    labels, matrix = confusion["labels"], confusion["matrix"]
    fig = go.Figure(go.Heatmap(z=matrix, x=labels, y=labels, colorscale="Blues", text=matrix, texttemplate="%{text}"))
    fig.update_layout(
        xaxis_title="predicted",
        yaxis_title="true",
        yaxis_autorange="reversed",
        height=max(300, 90 + 28 * len(labels)),
        margin={"l": 10, "r": 10, "t": 36, "b": 10},
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
    fig.update_layout(  # no title: the component's label names it (a title collides with it on a phone)
        xaxis={"title": "confidence", "range": [0, 1]},
        yaxis={"title": "accuracy", "range": [0, 1]},
        height=360,
        margin={"l": 10, "r": 10, "t": 20, "b": 10},
        # below the x-axis title, not on it
        legend={"orientation": "h", "yanchor": "top", "y": -0.28, "x": 0},
    )
    return fig
