"""The Gradio UI: ``create_demo(app) -> gr.Blocks``, one module per tab. Handlers only wire
components to the service layer (``mmdemo.app.backend.App``) and the pure renderers.

This package is the only place that imports gradio (besides benchmarks/stages.py, which profiles it).
"""

from __future__ import annotations

import os
import warnings

import gradio as gr

from ..app.backend import App
from . import gradio_patches
from .api import declare_api
from .common import reopen_tab
from .compare import compare_tab
from .evaluate import PredictLink, evaluate_tab
from .finetune import FinetuneTab, csv_columns, finetune_tab
from .identity import browser_state, token_component
from .predict import PredictTab, predict_tab
from .teach import teach_tab

gradio_patches.bound_queue_analytics()  # before any Blocks is made: its queue reads them

__all__ = ["App", "CSS", "FinetuneTab", "PredictTab", "create_demo", "csv_columns"]

# Small pictures (a 75 px scene) are enlarged in the view only, without blurring them, in every
# tab that takes one.
CSS = """
#image-input img, #cmp-image img, #wi-image img {
  image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain;
}
#overlay img, #word-maps img, #region-grid img, #cmp-overlay-a img, #cmp-overlay-b img,
#wi-overlay-before img, #wi-overlay-after img, #eval-overlay img { image-rendering: pixelated; }
#overlay, #word-maps, #region-grid { padding-top: 40px; }
#capabilities-text { padding: 4px 12px; }
/* a plan's or a report's long lines wrap instead of running out of sight */
#job-plan pre, #preflight pre, #job-plan code, #preflight code { white-space: pre-wrap; overflow-wrap: anywhere; }
/* a plot's own title and axes start below the block's label */
.block:has(> .js-plotly-plot), .block:has(.js-plotly-plot) { padding-top: 36px; }
/* a phone's first screen holds the image, the question, Predict and the first example */
@media (max-width: 640px) {
  #image-input { height: 244px !important; }
  #examples thead { display: none; }
  #examples td.image .container { width: 48px; height: 48px; }
  /* no Plotly toolbar over the labels and titles on a phone (a touch zooms and pans anyway) */
  .js-plotly-plot .modebar-container { display: none !important; }
  /* tables fit the screen: every column in sight, narrow cells */
  #per-class table, #eval-slices table, #eval-confusion table { table-layout: auto; width: 100% !important; }
  #per-class th, #per-class td { min-width: 0 !important; padding: 2px 4px !important; font-size: 12px; }
}
"""


def create_demo(app: App) -> gr.Blocks:
    # css in the constructor still works in Gradio 6 (launch() takes it over); kept here so
    # every way of launching (app.py, tests, docs/make_screenshots.py) gets the same page
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The parameters have been moved", category=UserWarning)
        blocks = gr.Blocks(
            title="mmdemo: explainable image + text classifier",
            css=CSS,
        )
    with blocks as demo:
        gr.Markdown(
            "# mmdemo\nAsk a question about an image: get the answer, **where** the model looked for each word, "
            "which words mattered, and what each modality contributed. Fine-tune on your own CSV in the second tab."
        )
        if os.environ.get("MMDEMO_HF_SIGNIN", "").strip() in ("1", "true", "yes"):
            gr.LoginButton()  # the signed-in Hugging Face user owns what they fine-tune
        token = token_component()
        saved = browser_state({}, "mmdemo-finetune")  # the fine-tune form
        saved_tab = browser_state("predict", "mmdemo-tab")  # the open tab
        with gr.Tabs(elem_id="tabs", overflow_behavior="wrap") as tabs:  # every tab in sight on a phone
            predict = predict_tab(app, token, saved_tab)
            finetune, load = finetune_tab(app, predict.checkpoint, token, tabs, saved, saved_tab)
            teach_tab(app, predict.checkpoint, token, saved_tab)
            evaluate = evaluate_tab(app, PredictLink(tabs, predict), token, saved_tab=saved_tab)
            compare_tab(app, token, saved_tab)
        declare_api(predict, finetune)  # every named endpoint, in one place (ui/api.py)
        demo.load(
            finetune.page_load, load.poll_inputs, [*load.poll_outputs, token], api_visibility="private", queue=False
        )
        demo.load(finetune.restore, load.restore_inputs, load.restore_outputs, api_visibility="private", queue=False)
        demo.load(reopen_tab, saved_tab, tabs, api_visibility="private", queue=False)
        demo.load(evaluate.tab.restore, evaluate.load_inputs, evaluate.load_outputs, api_visibility="private")
    gradio_patches.check(demo)  # the Gradio the patches were written for, or a RuntimeError naming what differs
    gradio_patches.checked_inputs(demo)  # left-out trailing inputs filled, numbers checked in words
    return demo
