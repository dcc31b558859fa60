"""The Predict & Explain tab: image + text -> probabilities, heatmap overlay, word importance,
word x region matrix, modality contributions."""

from __future__ import annotations

import time
from typing import NamedTuple

import gradio as gr
import torch

from .. import render
from ..explain import DEFAULT_METHOD, METHODS, peak_xy
from ..imaging import decode_image
from ..webapp import App

try:  # ZeroGPU on Hugging Face Spaces: GPU-bound handlers get a GPU while they run
    import spaces

    gpu = spaces.GPU
except ImportError:

    def gpu(fn):
        return fn


@gpu
def predict(app: App, image_path, text, checkpoint, method, opacity):
    """Handler of /predict: component values for every output of the Predict tab."""
    if not image_path:
        raise gr.Error("Please upload an image (or pick an example).")
    if not text or not str(text).strip():
        raise gr.Error("Please type a question or a description of the image.")
    checkpoint = checkpoint or app.default_checkpoint()
    method = method or DEFAULT_METHOD
    try:
        predictor = app.registry.predictor(checkpoint)
        image = decode_image(image_path, name="the image")
        start = time.perf_counter()
        prediction = predictor.predict_batch([image], [text], method)[0]
        contributions = predictor.modality_contributions(image, text)
        elapsed = (time.perf_counter() - start) * 1000
    except ValueError as e:
        raise gr.Error(str(e)) from None
    e = prediction.explanation
    info = (
        f"Inference: {elapsed:.0f} ms on {predictor.device} (model {prediction.forward_ms:.0f} ms) with `{checkpoint}`."
    )
    if prediction.truncated:
        info += f" The text was longer than {predictor.config.max_tokens} tokens and was truncated."
    state = {
        "image": image_path,
        "explanation": prediction.to_json(),
        "word_maps": e.word_maps.tolist(),
        "selected": None,
    }
    return (
        prediction.scores,
        state["explanation"],
        render.overlay(image, e.heatmap, opacity, e.peak_xy),
        list(zip(e.words, e.word_scores)),
        render.attention_matrix(e.words, e.token_region, tuple(e.heatmap.shape)),
        render.modality_chart(contributions),
        info,
        state,
    )


def redraw(state, opacity, selection: gr.SelectData | None = None):
    """Overlay for the whole text, or for the selected word; no model call."""
    if not state:
        return None, state
    if selection is not None:
        state = {**state, "selected": selection.index if state.get("selected") != selection.index else None}
    explanation = state["explanation"]
    image = decode_image(state["image"], name="the image")
    index = state.get("selected")
    if index is not None and index < len(state["word_maps"]):
        grid = torch.tensor(state["word_maps"][index])
        return render.overlay(image, grid, opacity, peak_xy(grid, image.size)), state
    return render.overlay(image, torch.tensor(explanation["heatmap"]), opacity, tuple(explanation["peak_xy"])), state


class PredictInputs(NamedTuple):
    """What other tabs need of this one: the checkpoint dropdown (refreshed by the fine-tune
    poll) and the inputs "Open in Predict & Explain" fills."""

    checkpoint: gr.Dropdown
    image: gr.Image
    text: gr.Textbox


def predict_tab(app: App) -> PredictInputs:
    """The tab's components and events."""
    default = app.default_checkpoint()
    with gr.Tab("Predict & Explain", id="predict"):
        state = gr.State(None)
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    type="filepath", sources=["upload", "clipboard", "webcam"], label="Image", elem_id="image-input"
                )
                text = gr.Textbox(
                    label="Question or text", placeholder="What shape is the red object?", elem_id="text-input"
                )
                with gr.Row():
                    checkpoint = gr.Dropdown(
                        app.registry.names(),
                        value=default,
                        label="Checkpoint",
                        elem_id="checkpoint",
                        allow_custom_value=True,
                    )
                    refresh = gr.Button("Refresh list", size="sm")
                with gr.Row():
                    method = gr.Radio(
                        list(METHODS),
                        value=DEFAULT_METHOD,
                        label="Explanation",
                        info="gradient: attention x gradient (class-specific); raw: attention weights",
                    )
                    opacity = gr.Slider(0, 1, value=0.55, step=0.05, label="Heatmap opacity")
                button = gr.Button("Predict", variant="primary", elem_id="predict-button")
            with gr.Column():
                label = gr.Label(num_top_classes=5, label="Prediction", elem_id="prediction")
                overlay = gr.Image(
                    label="Where the model looked (click a word below for its own map)",
                    elem_id="overlay",
                    interactive=False,
                )
                words = gr.HighlightedText(label="Word importance", elem_id="words", interactive=False)
                info = gr.Markdown(elem_id="timing")
        with gr.Row():
            matrix = gr.Plot(label="Word x region attention")
            modality = gr.Plot(label="Modality contributions")
        explanation = gr.JSON(label="Explanation (JSON, as the API returns it)", open=False)
        outputs = [label, explanation, overlay, words, matrix, modality, info, state]
        button.click(
            lambda *a: predict(app, *a),
            [image, text, checkpoint, method, opacity],
            outputs,
            api_name="predict",
            concurrency_limit=2,
            concurrency_id="predict",
        )
        examples = app.examples()
        if examples:
            gr.Examples(
                examples,
                [image, text],
                outputs,
                fn=lambda i, t: predict(app, i, t, default, DEFAULT_METHOD, 0.55),
                cache_examples=True,
                cache_mode="lazy",
                label="Examples (click one)",
                api_name=False,
            )
        opacity.release(redraw, [state, opacity], [overlay, state], api_name=False, queue=False)
        words.select(redraw, [state, opacity], [overlay, state], api_name=False, queue=False)
        refresh.click(lambda: gr.update(choices=app.registry.names()), None, checkpoint, api_name=False, queue=False)

    return PredictInputs(checkpoint, image, text)
