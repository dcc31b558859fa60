"""The Compare & What-if tab: one input through two checkpoints (or raw vs gradient) side by
side, and a counterfactual edit (another question, or squares of the image blanked by
clicking them) with the prediction and heatmap before and after.

``CompareTab`` holds the handlers (they call the checkpoint registry's predictors and draw the
overlays with mmdemo.explain.render); ``compare_tab`` lays out the components and wires them to those
methods. Nothing is stored, and nothing here is a named API endpoint.
"""

from __future__ import annotations

import gradio as gr
from PIL import Image

from ..app.backend import App
from ..explain import render
from ..explain.counterfactual import blank_squares
from ..explain.methods import DEFAULT_METHOD, METHODS
from ..imaging import decode_image
from .common import answer_lead
from .identity import owner_of, refuse

OPACITY = 0.55
MAX_BLANKS = 50


def _image(path, what: str = "the image"):
    if not path:
        raise refuse("Please upload an image.")
    try:
        return decode_image(path, name=what)
    except ValueError as e:
        raise refuse(str(e)) from None


def _edited(state: dict | None):
    """The edited image at its own size (what the model is given)."""
    if not state or not state.get("image"):
        return None
    image = _image(state["image"])
    side = max(1, round(min(image.size) * state.get("side_pct", 16) / 100))
    return blank_squares(image, [tuple(c) for c in state.get("blanks", [])], side)


def _zoom(image) -> int:
    """Whole-number enlargement that shows a small image (a 75 px scene) big enough to click."""
    return max(1, -(-render.MIN_OVERLAY_SIDE // max(image.size)))


def _shown(state: dict | None):
    """The edited image as displayed: small images enlarged with nearest-neighbour pixels, so a
    click maps back to the image's own pixels by one whole-number factor."""
    edited = _edited(state)
    if edited is None:
        return None
    k = _zoom(edited)
    return edited.resize((edited.width * k, edited.height * k), Image.NEAREST) if k > 1 else edited


def mine(state: dict | None, image) -> dict | None:
    """The edit state, only for the page that shows its image: Gradio keys a gr.State by the
    session hash (anyone can send another's), while the cached path the page sends names an
    upload's content."""
    return state if state and image and state.get("image") == image else None


class CompareTab:
    """The tab's handlers, bound to the app."""

    def __init__(self, app: App):
        self.app = app

    def owner(self, token, profile=None) -> str | None:
        """Whose checkpoints may be compared besides the shipped ones (App.owner, from the owner token)."""
        return owner_of(self.app, token, profile)

    def _predict(self, image, text: str, checkpoint: str | None, method: str | None, owner: str | None = None):
        """(probabilities, overlay, prediction) of one input; a gr.Error a user can act on."""
        if not text or not str(text).strip():
            raise refuse("Please type a question.")
        try:
            predictor = self.app.registry.predictor(checkpoint or self.app.default_checkpoint(), owner)
            prediction = predictor.predict_batch([image], [text], method or DEFAULT_METHOD)[0]
        except ValueError as e:
            raise refuse(str(e)) from None
        e = prediction.explanation
        return prediction.scores, render.overlay(image, e.heatmap, OPACITY, e.peak_xy), prediction

    def say_first_load(self, checkpoints, owner: str | None, progress) -> None:
        """A checkpoint's first use loads it from disk (seconds): the results' place says so."""
        names = [c or self.app.default_checkpoint() for c in checkpoints]
        cold = [n for n in dict.fromkeys(names) if n and not self.app.registry.is_loaded(str(n), owner)]
        if cold:
            progress(0, desc=f"loading checkpoint {', '.join(repr(str(n)) for n in cold)} (first use)")

    def names(self, token, profile: gr.OAuthProfile | None = None):
        """The checkpoint list the visitor may use (fine-tuned ones appear when a list opens)."""
        return gr.update(choices=self.app.registry.names(self.owner(token, profile)))

    # -- side by side ----------------------------------------------------------------------
    def compare(
        self, image_path, text, checkpoint_a, method_a, checkpoint_b, method_b, token=None,
        profile: gr.OAuthProfile | None = None,
        progress=gr.Progress(),  # noqa: B008 (how Gradio injects a progress bar)
    ):  # fmt: skip
        owner = self.owner(token, profile)
        image = _image(image_path)
        self.say_first_load([checkpoint_a, checkpoint_b], owner, progress)
        scores_a, overlay_a, a = self._predict(image, text, checkpoint_a, method_a, owner)
        scores_b, overlay_b, b = self._predict(image, text, checkpoint_b, method_b, owner)
        name_a = f"`{checkpoint_a}` ({method_a})"
        name_b = f"`{checkpoint_b}` ({method_b})"
        pa, pb = a.explanation.peak_xy, b.explanation.peak_xy
        summary = (
            f"{name_a}: {answer_lead(a, f'{100 * a.scores[a.label]:.1f} %')}, peak at ({pa[0]:.0f}, {pa[1]:.0f}) · "
            f"{name_b}: {answer_lead(b, f'{100 * b.scores[b.label]:.1f} %')}, peak at ({pb[0]:.0f}, {pb[1]:.0f}) · "
            + ("they **agree**." if a.label == b.label else "they **disagree**.")
        )
        return scores_a, overlay_a, scores_b, overlay_b, summary

    # -- what if ---------------------------------------------------------------------------
    @staticmethod
    def new_image(image_path):
        """A new image to edit: no blanks yet."""
        state = {"image": image_path, "blanks": [], "side_pct": 16}
        return state, _shown(state) if image_path else None

    @staticmethod
    def same_question(text):
        """The edited question starts as the question."""
        return text

    @staticmethod
    def blank_at(state, side_pct, evt: gr.SelectData, image=None):
        """A click on the edited image blanks a square around the clicked pixel."""
        state = mine(state, image)
        if not state or not state.get("image"):
            raise refuse("Upload an image first.")
        if len(state["blanks"]) >= MAX_BLANKS:
            raise refuse(f"At most {MAX_BLANKS} blanked squares; press 'Undo all edits' to start again.")
        k = _zoom(_image(state["image"]))
        x, y = (float(v) / k for v in evt.index)  # displayed pixels -> the image's own pixels
        state = {**state, "blanks": [*state["blanks"], [x, y]], "side_pct": float(side_pct or 16)}
        return state, _shown(state), f"{len(state['blanks'])} square(s) blanked; last at ({x:.0f}, {y:.0f})."

    @staticmethod
    def reset(state, image=None):
        """Undo all edits (another page's state is left alone)."""
        state = mine(state, image)
        if not state:
            return (gr.skip(),) * 3
        state = {**state, "blanks": []}
        return state, _shown(state), "No edits."

    def what_if(
        self, state, text, edited_text, checkpoint, method, image=None, token=None,
        profile: gr.OAuthProfile | None = None,
        progress=gr.Progress(),  # noqa: B008 (how Gradio injects a progress bar)
    ):  # fmt: skip
        """Prediction and heatmap of the original input and of the edited one."""
        owner = self.owner(token, profile)
        self.say_first_load([checkpoint], owner, progress)
        state = mine(state, image)
        if not state or not state.get("image"):
            raise refuse("Please upload an image.")
        original = _image(state["image"])
        edited = _edited(state)
        edited_text = edited_text if edited_text and str(edited_text).strip() else text
        scores_before, overlay_before, before = self._predict(original, text, checkpoint, method, owner)
        scores_after, overlay_after, after = self._predict(edited, edited_text, checkpoint, method, owner)
        changes = []
        if edited_text.strip() != str(text).strip():
            changes.append(f"question *{text}* → *{edited_text}*")
        if state.get("blanks"):
            changes.append(f"{len(state['blanks'])} square(s) blanked")
        verdict = (
            f"the answer **changed**: {before.label} → **{after.label}**"
            if before.label != after.label
            else f"the answer is **unchanged** ({before.label})"
        )
        summary = (
            f"Edit: {', '.join(changes) or 'none'}. Before: {answer_lead(before, f'{100 * before.scores[before.label]:.1f} %')}; "
            f"after: {answer_lead(after, f'{100 * after.scores[after.label]:.1f} %')}; {verdict}."
        )
        return scores_before, overlay_before, scores_after, overlay_after, summary

    @staticmethod
    def remember_tab() -> str:
        return "compare"


def compare_tab(app: App, owner_token: gr.BrowserState, saved_tab: gr.BrowserState | None = None) -> CompareTab:
    """The tab's components and events; every event sends ``owner_token`` (ui/identity.py).
    A checkpoint name not in a list reaches the handlers (allow_custom_value), which answer
    "unknown checkpoint" for another visitor's, instead of Gradio's choice check."""
    ct = CompareTab(app)
    names, default = app.registry.names(), app.default_checkpoint()
    with gr.Tab("Compare & What-if", id="compare") as tab:
        if saved_tab is not None:  # a reload opens this tab again (ui/common.py reopen_tab)
            tab.select(ct.remember_tab, None, saved_tab, api_visibility="private", queue=False)
        gr.Markdown("### Side by side\nOne image and question through two checkpoints, or raw vs gradient.")
        with gr.Row():
            image = gr.Image(type="filepath", label="Image", elem_id="cmp-image", height=300)
            with gr.Column():
                text = gr.Textbox(label="Question", elem_id="cmp-text")
                with gr.Row():
                    checkpoint_a = gr.Dropdown(
                        names, value=default, label="A: checkpoint", elem_id="cmp-checkpoint-a", allow_custom_value=True
                    )
                    method_a = gr.Radio(
                        list(METHODS), value=DEFAULT_METHOD, label="A: explanation", elem_id="cmp-method-a"
                    )
                with gr.Row():
                    checkpoint_b = gr.Dropdown(
                        names, value=default, label="B: checkpoint", elem_id="cmp-checkpoint-b", allow_custom_value=True
                    )
                    method_b = gr.Radio(list(METHODS), value="gradient", label="B: explanation", elem_id="cmp-method-b")
                run = gr.Button("Compare", variant="primary", elem_id="cmp-run")
        summary = gr.Markdown(elem_id="cmp-summary")
        with gr.Row():
            with gr.Column():
                label_a = gr.Label(num_top_classes=3, label="A", elem_id="cmp-label-a")
                overlay_a = gr.Image(label="A: where it looked", interactive=False, elem_id="cmp-overlay-a")
            with gr.Column():
                label_b = gr.Label(num_top_classes=3, label="B", elem_id="cmp-label-b")
                overlay_b = gr.Image(label="B: where it looked", interactive=False, elem_id="cmp-overlay-b")

        gr.Markdown(
            "### What if\nEdit the question (e.g. swap the colour word) and/or click the image on the right to blank "
            "a square there; compare the prediction and heatmap before and after."
        )
        state = gr.State(None)
        with gr.Row():
            wi_image = gr.Image(type="filepath", label="Image", elem_id="wi-image", height=300)
            edited = gr.Image(
                label="Edited image (click to blank a square)",
                interactive=False,
                type="pil",
                format="png",  # lossless: the pixels shown are the pixels predicted
                elem_id="wi-edited",
            )
            with gr.Column():
                wi_text = gr.Textbox(label="Question", elem_id="wi-text")
                wi_edit_text = gr.Textbox(label="Edited question (empty: the same)", elem_id="wi-edit-text")
                side = gr.Slider(4, 50, value=16, step=1, label="Blanked square (% of the image side)")
                with gr.Row():
                    wi_checkpoint = gr.Dropdown(
                        names, value=default, label="Checkpoint", elem_id="wi-checkpoint", allow_custom_value=True
                    )
                    wi_method = gr.Radio(list(METHODS), value=DEFAULT_METHOD, label="Explanation")
                edits = gr.Markdown("No edits.", elem_id="wi-edits")
                with gr.Row():
                    undo = gr.Button("Undo all edits", elem_id="wi-undo")
                    wi_run = gr.Button("Before / after", variant="primary", elem_id="wi-run")
        wi_summary = gr.Markdown(elem_id="wi-summary")
        with gr.Row():
            with gr.Column():
                label_before = gr.Label(num_top_classes=3, label="Before", elem_id="wi-label-before")
                overlay_before = gr.Image(label="Before", interactive=False, elem_id="wi-overlay-before")
            with gr.Column():
                label_after = gr.Label(num_top_classes=3, label="After", elem_id="wi-label-after")
                overlay_after = gr.Image(label="After", interactive=False, elem_id="wi-overlay-after")

        predicting = dict(api_name=False, concurrency_limit=2, concurrency_id="predict")
        run.click(
            ct.compare,
            [image, text, checkpoint_a, method_a, checkpoint_b, method_b, owner_token],
            [label_a, overlay_a, label_b, overlay_b, summary],
            **predicting,
        )
        for dropdown in (checkpoint_a, checkpoint_b, wi_checkpoint):
            dropdown.focus(ct.names, owner_token, dropdown, api_name=False, queue=False)
        wi_image.change(ct.new_image, wi_image, [state, edited], api_name=False)
        wi_text.change(ct.same_question, wi_text, wi_edit_text, api_name=False, queue=False)
        edited.select(ct.blank_at, [state, side, wi_image], [state, edited, edits], api_name=False)
        undo.click(ct.reset, [state, wi_image], [state, edited, edits], api_name=False)
        wi_run.click(
            ct.what_if,
            [state, wi_text, wi_edit_text, wi_checkpoint, wi_method, wi_image, owner_token],
            [label_before, overlay_before, label_after, overlay_after, wi_summary],
            **predicting,
        )
    return ct
