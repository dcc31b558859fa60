"""The Predict & Explain tab: image + text -> probabilities, heatmap overlay, word importance,
word x region matrix, modality contributions."""

from __future__ import annotations

import base64
import time

import gradio as gr
import torch
from gradio import processing_utils

from .. import render
from ..explain import DEFAULT_METHOD, METHODS, peak_xy
from ..imaging import decode_image
from ..webapp import App
from .identity import owner_of, refuse, unexpected

try:  # ZeroGPU on Hugging Face Spaces: GPU-bound handlers get a GPU while they run
    import spaces

    gpu = spaces.GPU
except ImportError:

    def gpu(fn):
        return fn


class ImagePath(gr.Image):
    """gr.Image that hands the handler the uploaded file as it is: Gradio 6.31's own
    preprocessing opens every upload with PIL (and with an image_mode converts it), before any
    size check of ours; here the file is decoded once, by mmdemo.imaging.decode_image, with the
    pixel cap read from the header, so the web app and the CLI treat a file the same."""

    is_template = True  # the browser side is gr.Image's

    def preprocess(self, payload):
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):  # inline image: bytes to a file, undecoded
            data = base64.b64decode(processing_utils.extract_base64_data(payload.url))
            return processing_utils.save_bytes_to_cache(data, "image", cache_dir=self.GRADIO_CACHE)
        if payload.path is None:
            raise refuse("the image upload has no file")
        return str(payload.path)


@gpu
def predict(app: App, image_path, text, checkpoint, method, opacity, owner: str | None = None):
    """Handler of /predict: component values for every output of the Predict tab. ``owner``
    (decided on the server) may use their own checkpoints besides the shipped ones."""
    try:
        text = app.check_text(text)  # before anything else: a huge text is refused at once
    except ValueError as e:
        raise refuse(str(e)) from None
    if not image_path:
        raise refuse("Please upload an image (or pick an example).")
    checkpoint = checkpoint or app.default_checkpoint()
    method = method or DEFAULT_METHOD
    if method not in METHODS:
        raise refuse(f"unknown explanation method {str(method)[:40]!r}; use one of {', '.join(METHODS)}")
    try:
        opacity = min(1.0, max(0.0, float(opacity)))
    except (TypeError, ValueError):
        raise refuse("the opacity must be a number from 0 to 1") from None
    try:
        predictor = app.registry.predictor(str(checkpoint), owner)
        image = decode_image(image_path, name="the image", max_pixels=app.limits.max_image_pixels)
        start = time.perf_counter()
        prediction, contributions = predictor.analyse(image, text, method)  # one encoder pass
        elapsed = (time.perf_counter() - start) * 1000
    except ValueError as e:
        raise refuse(str(e)) from None
    except Exception as e:  # noqa: BLE001 - the server keeps serving; the log has the traceback
        raise unexpected("the prediction", e) from None
    e = prediction.explanation
    info = (
        f"Inference: {elapsed:.0f} ms on {predictor.device} (model {prediction.forward_ms:.0f} ms) with `{checkpoint}`."
    )
    if prediction.truncated:
        info += f" The text was longer than {predictor.config.max_tokens} tokens and was truncated."
    answer = prediction.scores if prediction.in_scope else "no confident answer (out of scope)"
    state = {
        "image": image_path,
        "text": text,
        "checkpoint": checkpoint,
        "owner": owner,  # decided on the server; the state never leaves it
        "explanation": prediction.to_json(),
        "word_maps": e.word_maps.tolist(),
        "selected": None,
    }
    return (
        answer,
        state["explanation"],
        render.overlay(image, e.heatmap, opacity, e.peak_xy),
        list(zip(e.words, e.word_scores)),
        render.attention_matrix(e.words, e.token_region, tuple(e.heatmap.shape)),
        render.modality_chart(contributions),
        info,
        scope_banner(prediction),
        state,
    )


def scope_banner(prediction) -> str:
    """Markdown warning for an out-of-scope prediction ("" when in scope)."""
    s = prediction.scope
    if s["in_scope"]:
        return ""
    reasons = "; ".join(s["messages"])
    return (
        f"**⚠ Out of scope: {reasons}.** The model abstains: its most probable answer would be "
        f"'{prediction.label}' ({prediction.confidence:.0%}), which should not be trusted here."
    )


def deletion(app: App, state):
    """Handler of the deletion-curve button: the curve chart and its areas for the last prediction."""
    if not state or "text" not in state:
        raise gr.Error("Predict first, then measure the deletion curve.")
    e = state["explanation"]
    try:
        curves = app.deletion_curves(
            state["checkpoint"], state["image"], state["text"], e["heatmap"], e["label"], state.get("owner")
        )
    except ValueError as err:
        raise gr.Error(str(err)) from None
    summary = (
        f"Deletion area **{curves['deletion_auc']:.3f}** blanking the hottest regions first, "
        f"{curves['random_deletion_auc']:.3f} in a random order (lower than random: the heatmap points at what "
        f"the answer depends on); insertion area {curves['insertion_auc']:.3f}."
    )
    return render.deletion_chart(curves), summary


def redraw(state, opacity, selection: gr.SelectData | None = None):
    """Overlay for the whole text, or for the selected word; no model call."""
    if not state:
        return None, state
    if selection is not None:
        state = {**state, "selected": selection.index if state.get("selected") != selection.index else None}
    explanation = state["explanation"]
    try:
        image = decode_image(state["image"], name="the image")
    except ValueError:  # the upload expired from Gradio's cache (MMDEMO_CACHE_TTL_MIN): keep the overlay shown
        return gr.skip(), state
    index = state.get("selected")
    if index is not None and index < len(state["word_maps"]):
        grid = torch.tensor(state["word_maps"][index])
        return render.overlay(image, grid, opacity, peak_xy(grid, image.size)), state
    return render.overlay(image, torch.tensor(explanation["heatmap"]), opacity, tuple(explanation["peak_xy"])), state


def predict_tab(app: App, tokens: tuple[gr.BrowserState, gr.State]) -> gr.Dropdown:
    """The tab's components and events; returns the checkpoint dropdown (refreshed by the poll).
    ``tokens``: the visitor's owner token components (ui/identity.py)."""
    default = app.default_checkpoint()
    with gr.Tab("Predict & Explain"):
        state = gr.State(None, time_to_live=app.limits.session_ttl_min * 60)
        owner_token, session_token = tokens
        with gr.Row():
            with gr.Column():
                image = ImagePath(
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
                    format="jpeg",  # encodes in ~0.3 ms where webp took ~25 ms on every /predict
                )
                words = gr.HighlightedText(label="Word importance", elem_id="words", interactive=False)
                info = gr.Markdown(elem_id="timing")
                banner = gr.Markdown(elem_id="scope-banner")
        with gr.Row():
            matrix = gr.Plot(label="Word x region attention")
            modality = gr.Plot(label="Modality contributions")
        explanation = gr.JSON(label="Explanation (JSON, as the API returns it)", open=False)
        with gr.Row():
            deletion_button = gr.Button(
                "Deletion curve (is the heatmap faithful?)", size="sm", elem_id="deletion-button"
            )
        deletion_summary = gr.Markdown(elem_id="deletion-summary")
        deletion_plot = gr.Plot(label="Deletion curve", elem_id="deletion-plot")
        deletion_button.click(
            lambda s: deletion(app, s),
            state,
            [deletion_plot, deletion_summary],
            api_name=False,
            concurrency_id="predict",
        )
        with gr.Accordion("Model card", open=False):
            card = gr.Markdown(app.model_card(default), elem_id="model-card")
        checkpoint.change(app.model_card, checkpoint, card, api_name=False, queue=False)
        outputs = [label, explanation, overlay, words, matrix, modality, info, banner, state]

        def on_predict(
            image_path,
            text,
            checkpoint=None,
            method=None,
            opacity=0.55,
            owner_token=None,
            session_token=None,
            profile: gr.OAuthProfile | None = None,
        ):
            return predict(
                app, image_path, text, checkpoint, method, opacity, owner_of(app, owner_token, session_token, profile)
            )

        button.click(
            on_predict,
            [image, text, checkpoint, method, opacity, owner_token, session_token],
            outputs,
            api_name="predict",
            # up to 8 requests at once: those that meet in Predictor.analyse share one batch
            concurrency_limit=8,
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

        def refresh_list(owner_token=None, session_token=None, profile: gr.OAuthProfile | None = None):
            return gr.update(choices=app.registry.names(owner_of(app, owner_token, session_token, profile)))

        refresh.click(refresh_list, [owner_token, session_token], checkpoint, api_name=False, queue=False)

    return checkpoint
