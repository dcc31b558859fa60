"""The Gradio UI: ``create_demo(app) -> gr.Blocks``, one module per tab. Handlers only wire
components to the service layer (``mmdemo.webapp.App``) and the pure renderers.

This package is the only place that imports gradio.
"""

from __future__ import annotations

import gradio as gr

from ..webapp import App
from .compare import compare_tab
from .evaluate import PredictLink, evaluate_tab
from .finetune import csv_columns, finetune_tab
from .predict import predict, predict_tab, redraw

__all__ = ["App", "create_demo", "csv_columns", "predict", "redraw"]


def create_demo(app: App) -> gr.Blocks:
    with gr.Blocks(title="mmdemo: explainable image + text classifier", delete_cache=(3600, 7200)) as demo:
        gr.Markdown(
            "# mmdemo\nAsk a question about an image; see the answer, **where** the model looked for each word, "
            "which words mattered, and what each modality contributed. Fine-tune on your own CSV in the second tab."
        )
        with gr.Tabs() as tabs:
            inputs = predict_tab(app)
            poll, known_names, poll_outputs = finetune_tab(app, inputs.checkpoint)
            evaluate_tab(app, PredictLink(tabs, inputs.image, inputs.text, inputs.checkpoint))
            compare_tab(app)
        demo.load(poll, known_names, poll_outputs, api_name=False, queue=False)
    return demo
