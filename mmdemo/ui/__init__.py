"""The Gradio UI: ``create_demo(app) -> gr.Blocks``, one module per tab. Handlers only wire
components to the service layer (``mmdemo.webapp.App``) and the pure renderers.

This package is the only place that imports gradio.
"""

from __future__ import annotations

import os

# Gradio's queue keeps a record of its last N events for analytics (10,000 by default, a few
# MB that grow for hours under load); read when the Blocks are made, so set before that.
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "200")

import gradio as gr  # noqa: E402

from ..registry import TOKEN_PATTERN  # noqa: E402
from ..webapp import App  # noqa: E402
from .finetune import csv_columns, finetune_tab
from .identity import token_components
from .predict import predict, predict_tab, redraw

__all__ = ["App", "create_demo", "csv_columns", "predict", "redraw"]

# Gradio's cache (uploads, output images) is swept every CACHE_SWEEP_S of files older than
# MMDEMO_CACHE_TTL_MIN: under a steady load the cache stays flat once that age is reached.
CACHE_SWEEP_S = 30


def cache_ttl_s() -> int:
    return int(60 * float(os.environ.get("MMDEMO_CACHE_TTL_MIN", "3")))


def create_demo(app: App) -> gr.Blocks:
    with gr.Blocks(
        title="mmdemo: explainable image + text classifier", delete_cache=(CACHE_SWEEP_S, cache_ttl_s())
    ) as demo:
        gr.Markdown(
            "# mmdemo\nAsk a question about an image; see the answer, **where** the model looked for each word, "
            "which words mattered, and what each modality contributed. Fine-tune on your own CSV in the second tab."
        )
        if os.environ.get("MMDEMO_HF_SIGNIN", "").strip() in ("1", "true", "yes"):
            gr.LoginButton()  # the signed-in Hugging Face user owns what they fine-tune
        tokens = token_components()
        checkpoint = predict_tab(app, tokens)
        poll, poll_inputs, poll_outputs = finetune_tab(app, checkpoint, tokens)

        def on_load(known, owner_token=None, session_token=None, profile: gr.OAuthProfile | None = None):
            """A new browser gets its secret owner token here, made on the server."""
            if not (isinstance(owner_token, str) and TOKEN_PATTERN.match(owner_token)):
                owner_token = app.new_token()  # none yet, or not one of ours
            return (*poll(known, owner_token, session_token, profile), owner_token)

        demo.load(on_load, poll_inputs, [*poll_outputs, tokens[0]], api_name=False, queue=False)
    return demo
