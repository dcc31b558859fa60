"""The Gradio UI: ``create_demo(app) -> gr.Blocks``, one module per tab. Handlers only wire
components to the service layer (``mmdemo.webapp.App``) and the pure renderers.

This package is the only place that imports gradio.
"""

from __future__ import annotations

import warnings

import gradio as gr

from ..webapp import App
from .finetune import csv_columns, finetune_tab
from .predict import predict, predict_tab, redraw

__all__ = ["App", "CSS", "create_demo", "csv_columns", "predict", "redraw"]

# Small pictures (a 75 px scene) are enlarged in the view only, without blurring them.
CSS = """
#image-input img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
#overlay img, #word-maps img, #region-grid img { image-rendering: pixelated; }
#overlay, #word-maps, #region-grid { padding-top: 40px; }
#capabilities-text { padding: 4px 12px; }
"""


def create_demo(app: App) -> gr.Blocks:
    # css in the constructor still works in Gradio 6 (launch() takes it over); kept here so
    # every way of launching (app.py, tests, docs/make_screenshots.py) gets the same page
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The parameters have been moved", category=UserWarning)
        blocks = gr.Blocks(title="mmdemo: explainable image + text classifier", delete_cache=(3600, 7200), css=CSS)
    with blocks as demo:
        gr.Markdown(
            "# mmdemo\nAsk a question about an image: get the answer, **where** the model looked for each word, "
            "which words mattered, and what each modality contributed. Fine-tune on your own CSV in the second tab."
        )
        saved = gr.BrowserState({}, storage_key="mmdemo-finetune")  # the fine-tune form
        saved_tab = gr.BrowserState("predict", storage_key="mmdemo-tab")  # the open tab
        with gr.Tabs(elem_id="tabs") as tabs:
            checkpoint = predict_tab(app, saved_tab)
            poll, known_names, poll_outputs, (restore, saved, restored) = finetune_tab(
                app, checkpoint, tabs, saved, saved_tab
            )
        demo.load(poll, known_names, poll_outputs, api_visibility="private", queue=False)
        demo.load(restore, saved, restored, api_visibility="private", queue=False)
    return demo
