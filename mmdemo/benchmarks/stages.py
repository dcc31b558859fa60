"""Where /predict's time goes (``python -m mmdemo bench-app --stages N``): the handler run in
this process on varied Sort-of-CLEVR scenes, each stage timed by wrapping the function that does
it (decoding, tokenizing, pixels, the ONNX Runtime forward, the out-of-scope check, the
explanation, each picture and chart), then Gradio's own postprocessing of the outputs (encoding
the pictures and writing them to its cache, serialising the charts), per component type.

A profiler for the speed budget, not a test: the wrapped functions are the real ones, called
as the handler calls them. What happens outside this process (HTTP, the queue, the result
stream) is in ``bench-app``'s figures (Gradio's own phase timings and the HTTP total).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from ..app import backend
from ..app.backend import App
from ..device import resolve_device
from ..explain import render
from ..inference.engines import torch_threads_for_serving
from ..ui.gradio_patches import outputs_postprocessor

# the Predict tab's module, whose handler /predict runs
predict_module = importlib.import_module("mmdemo.ui.predict")


class _Clock:
    """Milliseconds spent in each named stage during the current request."""

    def __init__(self):
        self.current: dict[str, float] = defaultdict(float)
        self.calls: list[dict[str, float]] = []

    def wrap(self, owner, name: str, stage: str):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.current[stage] += (time.perf_counter() - start) * 1000

        setattr(owner, name, timed)
        return owner, name, original

    def next_call(self) -> None:
        self.calls.append(dict(self.current))
        self.current = defaultdict(float)


def stages(requests: int = 48, app: App | None = None) -> dict:
    """p50 / p95 milliseconds per stage of /predict's handler over ``requests`` calls (after a
    warm-up), as the app runs it (torch at the serving thread count)."""
    app = app or App()
    threads_before = torch.get_num_threads()
    threads = torch_threads_for_serving(resolve_device(app.registry.device))
    if threads:
        torch.set_num_threads(threads)
    try:
        return _stages(app, requests)
    finally:
        torch.set_num_threads(threads_before)


def _stages(app: App, requests: int) -> dict:
    from .app_speed import varied_inputs

    demo = _demo(app)
    block_fn = next(fn for fn in demo.fns.values() if fn.api_name == "predict")
    checkpoint = app.default_checkpoint()
    predictor = app.registry.predictor(checkpoint)
    clock = _Clock()
    engine = predictor.engine
    patches = [
        clock.wrap(backend, "decode_image", "decode image"),
        clock.wrap(predictor, "analyse", "analyse (one encoder pass)"),
        clock.wrap(predictor, "tokens", "analyse / tokenize"),
        clock.wrap(predictor, "pixels", "analyse / image to pixels"),
        clock.wrap(predictor, "_assess_scope", "analyse / out-of-scope check"),
        clock.wrap(predictor, "_explain_sample", "analyse / explanation maths"),
        clock.wrap(backend, "relation_objects", "relational boxes (from the picture)"),
        clock.wrap(predict_module.PredictTab, "map_note", "map note (reads the checkpoint's benchmark)"),
        clock.wrap(render, "overlay", "overlay picture"),
        clock.wrap(render, "word_maps_grid", "word maps picture"),
        clock.wrap(render, "region_grid", "region grid picture"),
        clock.wrap(render, "attention_matrix", "charts / word x region figure"),
        clock.wrap(render, "modality_chart", "charts / modality figure"),
        clock.wrap(render, "plotly_json", "charts / serialise"),
    ]
    for component in (gr.Image, gr.Plot, gr.Label, gr.JSON, gr.HighlightedText, gr.Markdown):
        patches.append(clock.wrap(component, "postprocess", f"gradio postprocess / {component.__name__}"))

    def forward(rows):
        start = time.perf_counter()
        try:
            return engine(rows)
        finally:
            clock.current[f"analyse / forward ({predictor.backend}, {len(rows.image_index)} rows)"] += (
                time.perf_counter() - start
            ) * 1000

    predictor.engine = forward
    folder = Path(tempfile.mkdtemp(prefix="predict-stages-"))
    try:
        pairs = varied_inputs(folder)
        asyncio.run(_calls(demo, block_fn, app, checkpoint, pairs, requests, clock))
    finally:
        predictor.engine = engine
        for owner, name, original in reversed(patches):
            if owner is predictor:
                delattr(owner, name)  # back to the class's method
            else:
                setattr(owner, name, original)
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    calls = clock.calls[len(pairs) :]  # the first round is the warm-up
    names = sorted({name for call in calls for name in call}, key=lambda n: (n.split(" / ")[0], n))
    figures = {
        name: {
            "p50": round(float(np.percentile([c.get(name, 0.0) for c in calls], 50)), 2),
            "p95": round(float(np.percentile([c.get(name, 0.0) for c in calls], 95)), 2),
        }
        for name in names
    }
    return {
        "requests": len(calls),
        "checkpoint": checkpoint,
        "engine": predictor.backend,
        "torch_threads": torch.get_num_threads(),
        "stages_ms": figures,
        "load_average": round(os.getloadavg()[0], 2),
    }


def _demo(app: App) -> gr.Blocks:
    from ..ui import create_demo

    return create_demo(app)


async def _calls(demo, block_fn, app, checkpoint, pairs, requests: int, clock: _Clock) -> None:
    postprocess = outputs_postprocessor(demo, block_fn)
    for i in range(len(pairs) + requests):
        image, question = pairs[i % len(pairs)]
        start = time.perf_counter()
        outputs = block_fn.fn(str(image), question, checkpoint)  # /predict's handler
        handler = time.perf_counter()
        with contextlib.redirect_stdout(None):
            await postprocess(list(outputs))
        done = time.perf_counter()
        clock.current["handler (all of the above but gradio)"] = (handler - start) * 1000
        clock.current["gradio postprocess (all outputs, files written to its cache)"] = (done - handler) * 1000
        clock.next_call()
