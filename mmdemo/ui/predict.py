"""The Predict & Explain tab: image + text -> answer, heatmap overlay, every word's map (small
multiples, click a word), word x region matrix with its numbered grid, modality contributions;
a banner when the input is out of scope; the deletion curve on demand; the model card. The
image, the question, Predict and the examples come first (the first screen, on a phone too);
what the chosen model can answer, with a question builder, is a closed panel below them.

``PredictTab`` holds the handlers: each calls the service layer (``App.answer``, the use case
behind /predict; ``App.deletion_curves``, ``App.capabilities``) and draws the views with the
pure renderers (mmdemo.explain.render). ``predict_tab`` lays out the components and wires them to those
methods; /predict itself is declared in ui/api.py, with the other named endpoints. Handlers have
typed, named parameters: Gradio names the API's parameters from the signature, and passes event
data (``gr.SelectData``) only to a parameter annotated with the class itself. Where the time of
one answer goes: ``python -m mmdemo bench-app --stages``.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import gradio as gr
import torch

from ..app.backend import Answer, App
from ..explain import render
from ..explain.methods import DEFAULT_METHOD, METHODS, peak_xy
from ..imaging import decode_image
from .common import BoundedSlider, ChoiceRadio, OpenRadio, answer_lead, input_error, markdown_text
from .gradio_patches import inline_image_to_cache, plot_value
from .identity import owner_of, unexpected
from .similar import similar_panel
from .zerogpu import gpu

DEFAULT_OPACITY = 0.55
OVERLAY_LABEL = "Where the model looked"
# after an answer arrives, bring it into view if it is not (on a phone it sits below the inputs)
SHOW_ANSWER_JS = """() => {
  const answer = document.getElementById('prediction');
  if (!answer) return;
  const box = answer.getBoundingClientRect();
  if (box.top < 0 || box.bottom > window.innerHeight) window.scrollTo({top: window.scrollY + box.top - 16});
}"""


# another tab filled the inputs and opened this one: its top in view (the answer comes next)
SHOW_TAB_TOP_JS = """() => {
  const tabs = document.getElementById('tabs');
  if (tabs) window.scrollTo({top: window.scrollY + tabs.getBoundingClientRect().top});
}"""


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
            return inline_image_to_cache(self, payload.url)
        if payload.path is None:
            raise input_error("predict", "the image upload has no file")
        if not os.path.exists(payload.path):  # swept from the cache (ui/cache.py CacheSweeper)
            raise input_error(
                "predict", "the image is no longer on the server (unused uploads are deleted): upload it again"
            )
        return str(payload.path)


def plot(figure: dict):
    """A gr.Plot value from a figure of plain dicts (render.plotly_json: no go.Figure per call)."""
    return plot_value(render.plotly_json(figure))


def scope_banner(prediction) -> str:
    """Markdown warning for an out-of-scope prediction ("" when in scope)."""
    s = prediction.scope
    if s["in_scope"]:
        return ""
    reasons = "; ".join(s["messages"])
    return (
        f"**⚠ Out of scope: {reasons}.** The model abstains: its most probable answer would be "
        f"'{markdown_text(prediction.label)}' ({prediction.confidence:.0%}), which should not be trusted here."
    )


def draw_views(image, state: dict, opacity: float):
    """Overlay, word list and small multiples for the state's selected word (None: whole question)."""
    index = state.get("selected")
    if index is not None and index < len(state["word_maps"]):
        grid_map = torch.tensor(state["word_maps"][index])
        overlay = render.overlay(image, grid_map, opacity, peak_xy(grid_map, image.size))
        label = f"{OVERLAY_LABEL} for “{state['words'][index]}”"
    else:
        index = None
        boxes = []
        relation = state.get("relation")
        if relation:
            boxes.append((relation["reference"], render.REFERENCE, "referenced object (attention peak)"))
            if relation["answer"]:
                boxes.append(
                    (relation["answer"], render.ANSWER, f"answer object ({relation['kind']} to it, from the picture)")
                )
        overlay = render.overlay(image, torch.tensor(state["heatmap"]), opacity, tuple(state["peak_xy"]), boxes)
        label = OVERLAY_LABEL
    words = [(f"[{w}]" if i == index else w, s) for i, (w, s) in enumerate(zip(state["words"], state["word_scores"]))]
    grid = render.word_maps_grid(
        image, state["words"], torch.tensor(state["word_maps"]), torch.tensor(state["heatmap"]), index, opacity
    )
    return gr.update(value=overlay, label=label), words, grid


def redraw(state: dict | None, opacity: float, selection: gr.SelectData | None = None):
    """Overlay, word list and small multiples after a word click (``selection``: select it, or
    back to the whole question when it was selected) or an opacity change; no model call."""
    if not state:
        return gr.skip(), gr.skip(), gr.skip(), state
    if selection is not None:
        index = selection.index if isinstance(selection.index, int) else None
        state = {**state, "selected": None if state.get("selected") == index else index}
    try:
        image = decode_image(state["image"], name="the image")
    except ValueError:  # the upload expired from Gradio's cache (MMDEMO_CACHE_TTL_MIN): keep the views shown
        return gr.skip(), gr.skip(), gr.skip(), state
    return (*draw_views(image, state, opacity), state)


def own_state(state: dict | None, image: str | None) -> dict | None:
    """The page's last prediction, only for the page that shows its image: Gradio keys a gr.State
    by the session hash, which anyone can send, while the image's cached path comes from the page
    itself (an upload's path names its content)."""
    return state if state and image and state.get("image") == image else None


class PredictTab:
    """The tab's handlers, bound to the app."""

    def __init__(self, app: App):
        self.app = app

    def owner(self, token, profile=None) -> str | None:
        """Whose checkpoints may be used besides the shipped ones (App.owner, from the owner token)."""
        return owner_of(self.app, token, profile)

    # -- answering -------------------------------------------------------------------------
    def predict(
        self,
        image: str,
        question: str,
        checkpoint: str | None = None,
        method: str = DEFAULT_METHOD,
        opacity: float = DEFAULT_OPACITY,
        owner_token: str | None = None,
        task: str | None = None,
        profile: gr.OAuthProfile | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (how Gradio injects a progress bar)
    ):
        """Answer a question about an image and explain the answer.

        image: the image (a file; any size, decoded server-side)
        question: the question or text about the image
        checkpoint: checkpoint name, one of the app's checkpoint list (default: the shipped model)
        method: explanation method, "raw" (default) or "gradient"
        opacity: heatmap opacity in the overlay, 0 to 1
        owner_token: the owner token /start_finetune returned, to use your own checkpoints (optional)
        task: for a checkpoint trained on several label columns, the task whose answer is explained (default: the first)
        """
        owner = self.owner(owner_token, profile)
        self.say_first_load(checkpoint, owner, progress)
        return self.answer(image, question, checkpoint, method, opacity, owner, task)

    def say_first_load(self, checkpoint: str | None, owner: str | None, progress: gr.Progress) -> None:
        """A checkpoint's first use loads it from disk (seconds): the answer's place says so."""
        name = checkpoint or self.app.default_checkpoint()
        if name and not self.app.registry.is_loaded(str(name), owner):
            progress(0, desc=f"loading checkpoint '{name}' (first use)")

    @gpu()  # ZeroGPU: one answer is one short GPU call (ui/zerogpu.py)
    def answer(
        self,
        image: str | None,
        question: str | None,
        checkpoint: str | None = None,
        method: str | None = DEFAULT_METHOD,
        opacity: float | None = DEFAULT_OPACITY,
        owner: str | None = None,
        task: str | None = None,
    ):
        """Component values for every output of the tab (and of /predict), from ``App.answer``;
        ``owner`` is decided on the server."""
        try:
            opacity = DEFAULT_OPACITY if opacity is None else min(1.0, max(0.0, float(opacity)))
        except (TypeError, ValueError):
            raise input_error("predict", "the opacity must be a number from 0 to 1") from None
        try:
            answer = self.app.answer(image, question, checkpoint, method, owner, task or None)
        except ValueError as e:
            raise input_error("predict", str(e)) from None
        except Exception as e:  # noqa: BLE001 - the server keeps serving; the log has the traceback
            raise unexpected("the prediction", e) from None
        return self.views(answer, opacity)

    def views(self, answer: Answer, opacity: float):
        """The tab's outputs drawn from an answer (explain/render.py), in the order of ``PredictView.outputs``."""
        prediction, state, image = answer.prediction, answer.state, answer.image
        e = prediction.explanation
        explained = prediction.tasks.get(prediction.explained_task, {"scores": prediction.scores})
        result = explained["scores"] if prediction.in_scope else "no confident answer (out of scope)"
        details = (
            f"{answer_lead(prediction, f'{prediction.scores[prediction.label]:.0%}')} from "
            f"`{state['checkpoint']}`, {state['method']} attention. Inference {answer.elapsed_ms:.0f} ms on "
            f"{answer.device} (model {prediction.forward_ms:.0f} ms)."
        )
        if prediction.truncated:
            details += f" The text was longer than {answer.max_tokens} tokens and was truncated."
        details += "\n\n" + self.map_note(state)
        overlay, words, grid = draw_views(image, state, opacity)
        return (
            result,
            answer.explanation,
            overlay,
            words,
            grid,
            plot(render.attention_matrix(e.words, e.token_region, tuple(e.heatmap.shape))),
            render.region_grid(image, tuple(e.heatmap.shape)),
            plot(render.modality_chart(answer.contributions)),
            details,
            scope_banner(prediction),
            task_answers(prediction),
            state,
        )

    def check_inputs(self, image, question, checkpoint, method, opacity, owner_token=None, task=None):
        """The page's validator: marks a missing image, or a missing or too long question, on its own
        input, before any model work."""
        problem = None if question and str(question).strip() else "Type a question, or build one below."
        try:
            problem = problem or (self.app.check_text(str(question)) and None)
        except ValueError as e:
            problem = str(e)
        return (
            gr.validate(bool(image), "Upload an image or pick an example."),
            gr.validate(problem is None, problem or ""),
            gr.validate(True, ""),
            gr.validate(True, ""),
            gr.validate(True, ""),
            gr.validate(True, ""),
            gr.validate(True, ""),
        )

    def rerun(
        self,
        image: str | None,
        question: str | None,
        checkpoint: str | None,
        method: str,
        opacity: float,
        owner_token: str | None = None,
        task: str | None = None,
        profile: gr.OAuthProfile | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (how Gradio injects a progress bar)
    ):
        """A new checkpoint, method or task answers again, so no stale result stays on screen."""
        if not image or not question or not str(question).strip():
            return (gr.skip(),) * (len(PREDICT_OUTPUTS) - 1) + (None,)
        owner = self.owner(owner_token, profile)
        self.say_first_load(checkpoint, owner, progress)
        return self.answer(image, question, checkpoint, method, opacity, owner, task)

    def task_choices(self, checkpoint: str | None, owner_token=None, profile: gr.OAuthProfile | None = None):
        """The task selector for a checkpoint (shown when it answers several tasks), and the
        explanation method: with several tasks, gradient, which explains the selected task's
        answer (raw attention is the same for every task)."""
        try:
            names = self.app.task_names(checkpoint, self.owner(owner_token, profile)) if checkpoint else []
        except (ValueError, OSError):
            names = []
        several = len(names) > 1
        return (
            gr.update(choices=names, value=names[0] if several else None, visible=several),
            gr.update(value="gradient") if several else gr.skip(),
        )

    def map_note(self, state: dict) -> str:
        """What the overlay shows, in words; for closest/furthest questions, which object is which."""
        relation = state["relation"]
        if relation is None:
            return (
                "The overlay shows where the model looked for the whole question (bright = more attention, "
                "magenta cross = peak). Click a word for its own map (again for the whole question); every word's "
                "map is below, the selected one framed."
            )
        _, _, benchmark = self.app.capabilities(state["checkpoint"], state.get("owner"))
        pointing = benchmark.get("pointing", {}).get("raw", {}).get("closest_furthest", {}).get(relation["kind"])
        measured = (
            f" On fresh scenes this checkpoint's peak falls on the referenced object in "
            f"{pointing['on_reference']:.0%} of '{relation['kind']}' questions and on the answer object in "
            f"{pointing['on_answer']:.0%}."
            if pointing
            else ""
        )
        answer = (
            f" The **blue box** is the object {relation['kind']} to it, found from the picture (not from the model)."
            if relation["answer"]
            else ""
        )
        return (
            f"Relational question: the **magenta box** marks the object the question refers to, where the model's "
            f"attention peaks (raw attention marks the referenced object, not the answer).{answer}{measured}"
        )

    # -- after an answer: word clicks, opacity, the deletion curve ---------------------------
    def select_word(self, state: dict | None, opacity: float, selection: gr.SelectData, image: str | None = None):
        state = own_state(state, image)
        return redraw(state, opacity, selection) if state else (gr.skip(),) * 4  # another's: left alone

    def change_opacity(self, state: dict | None, opacity: float, image: str | None = None):
        state = own_state(state, image)
        return redraw(state, opacity) if state else (gr.skip(),) * 4

    @gpu()
    def deletion_curve(self, state: dict | None, image: str | None = None):
        """The deletion-curve chart and its areas for the page's last prediction."""
        state = own_state(state, image)
        if not state or "question" not in state:
            raise input_error("deletion curve", "Predict first, then measure the deletion curve.")
        try:
            curves = self.app.deletion_curves(
                state["checkpoint"], state["image"], state["question"], state["heatmap"], state["label"],
                state.get("owner"),
            )  # fmt: skip
        except ValueError as err:
            raise input_error("deletion curve", str(err)) from None
        summary = (
            f"Deletion area **{curves['deletion_auc']:.3f}** blanking the hottest regions first, "
            f"{curves['random_deletion_auc']:.3f} in a random order (lower than random: the heatmap points at what "
            f"the answer depends on); insertion area {curves['insertion_auc']:.3f}."
        )
        return render.deletion_chart(curves), summary

    # -- the checkpoint: what it can answer, its question builder, its card --------------------
    def capabilities(self, checkpoint: str | None, owner: str | None = None) -> str:
        """The "What this model can answer" panel, from the checkpoint's config."""
        if not checkpoint:
            return "No checkpoint is available."
        try:
            labels, task, _ = self.app.capabilities(checkpoint, owner)
        except (ValueError, OSError) as e:
            return f"Cannot read {markdown_text(repr(checkpoint))}: {markdown_text(str(e))}"
        lines = [f"### What `{checkpoint}` can answer", ""]
        if task:
            lines.append(task.get("summary", ""))
            slot = task.get("slot", {})
            if slot:
                lines.append(f"**{slot['name'].capitalize()}s:** {', '.join(slot['values'])}.")
            kinds = "; ".join(f"{q['kind']} → {' / '.join(q['answers'])}" for q in task.get("questions", []))
            lines.append(f"**Kinds of question:** {kinds}.")
        answers = ", ".join(markdown_text(label) for label in labels)  # a fine-tuned model's come from a CSV
        lines.append(f"**Its {len(labels)} answers:** {answers}. It picks one of these for any input.")
        if task:
            lines.append("Build a question below (pick a kind and a colour), or pick an example above.")
        else:
            lines.append("This checkpoint does not list its kinds of question: ask in the words of its training data.")
        return "\n\n".join(lines)

    def question_builder(self, checkpoint: str | None, owner: str | None = None) -> tuple[dict, dict]:
        """Radio settings (choices, value, visible, label) of the question builder's kind and slot
        value, from the checkpoint's task (hidden when it lists none)."""
        try:
            _, task, _ = self.app.capabilities(checkpoint, owner) if checkpoint else ([], {}, {})
        except (ValueError, OSError):
            task = {}
        kinds = [q["kind"] for q in task.get("questions", [])]
        values = task.get("slot", {}).get("values", [])
        slot = task.get("slot", {}).get("name", "value").capitalize()
        return (
            dict(choices=kinds, value=None, visible=bool(kinds)),
            dict(choices=values, value=values[0] if values else None, visible=bool(values), label=slot),
        )

    def describe(self, name: str | None, owner_token=None, profile: gr.OAuthProfile | None = None):
        """What the newly chosen checkpoint can answer, its question builder and its card."""
        owner = self.owner(owner_token, profile)
        builder = (gr.update(**c) for c in self.question_builder(name, owner))
        return self.capabilities(name, owner), *builder, self.app.model_card(name, owner)

    def fill_question(
        self,
        checkpoint: str | None,
        kind: str | None,
        value: str | None,
        owner_token=None,
        profile: gr.OAuthProfile | None = None,
    ):
        """The question for a kind and a slot value, from the checkpoint's templates."""
        if not kind or not checkpoint:
            return gr.skip()
        try:
            _, task, _ = self.app.capabilities(checkpoint, self.owner(owner_token, profile))
        except (ValueError, OSError):
            return gr.skip()
        slot = task.get("slot", {}).get("name", "value")
        for q in task.get("questions", []):
            if q["kind"] == kind:
                return q["template"].replace("{" + slot + "}", value or "")
        return gr.skip()

    def refresh_list(self, owner_token=None, profile: gr.OAuthProfile | None = None):
        return gr.update(choices=self.app.registry.names(self.owner(owner_token, profile)))

    @staticmethod
    def remember_tab() -> str:
        return "predict"


# what the tab's answer fills, in ``PredictTab.views``' order (the state last: never sent to a client)
PREDICT_OUTPUTS = ("label", "explanation", "overlay", "words", "grid", "matrix", "regions", "modality", "details",
                   "banner", "answers", "state")  # fmt: skip


def task_answers(prediction) -> str:
    """Every task's answer, as a table (a checkpoint with several label columns); the explained
    task's marked. Empty for a one-task checkpoint (its answer is the Answer above)."""
    if len(prediction.tasks) < 2:
        return ""
    rows = ["| Task | Answer | Confidence |", "|---|---|---|"]
    for name, answer in prediction.tasks.items():
        mark = " (explained below)" if name == prediction.explained_task else ""
        rows.append(f"| {markdown_text(name)}{mark} | {markdown_text(answer['label'])} | {answer['confidence']:.0%} |")
    return "\n".join(rows)


class PredictView(NamedTuple):
    """What other parts of the page need of this tab: its handlers, the checkpoint dropdown (the
    fine-tune poll refreshes it), the inputs "Open in Predict & Explain" fills, and the inputs
    and outputs of an answer, which ui/api.py declares /predict with."""

    tab: PredictTab
    checkpoint: gr.Dropdown
    image: gr.Image
    text: gr.Textbox
    inputs: list  # image, text, checkpoint, method, opacity, owner token, task
    outputs: list  # as PREDICT_OUTPUTS
    examples: gr.Examples | None = None  # the shipped examples (the API page's sample uses the first)


def predict_tab(app: App, owner_token: gr.BrowserState, saved_tab: gr.BrowserState | None = None) -> PredictView:
    """The tab's components and events; every event sends ``owner_token`` (ui/identity.py);
    ``saved_tab`` remembers in the browser that this tab was the open one."""
    pt = PredictTab(app)
    default = app.default_checkpoint()
    with gr.Tab("Predict & Explain", id="predict") as tab:
        state = gr.State(None, time_to_live=app.limits.session_ttl_min * 60)
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=300):
                image = ImagePath(
                    type="filepath",
                    sources=["upload", "clipboard", "webcam"],
                    label="Image",
                    elem_id="image-input",
                    height=300,
                )
                text = gr.Textbox(
                    label="Question or text",
                    placeholder="What shape is the red object?",
                    elem_id="text-input",
                    lines=1,
                )
                button = gr.Button("Predict", variant="primary", elem_id="predict-button")
                examples = app.examples()
                example_set = (
                    gr.Examples(
                        examples,
                        [image, text],
                        label="Examples: click one (answered with the checkpoint and method below)",
                        examples_per_page=6,
                        elem_id="examples",
                    )
                    if examples
                    else None
                )
                with gr.Row():
                    checkpoint = gr.Dropdown(
                        app.registry.names(),
                        value=default,
                        label="Checkpoint",
                        elem_id="checkpoint",
                        allow_custom_value=True,
                        scale=3,
                        min_width=160,
                    )
                    refresh = gr.Button("Refresh list", size="sm", scale=1, min_width=90)
                # closed, below the examples: the first screen is the image, the question, Predict and the
                # examples, on a phone too (tests/ui/test_browser_predict.py measures it)
                with gr.Accordion(
                    "What this checkpoint can answer, and a question builder", open=False, elem_id="capabilities"
                ):
                    capabilities = gr.Markdown(pt.capabilities(default), elem_id="capabilities-text")
                    with gr.Row():
                        kind_choices, slot_choices = pt.question_builder(default)
                        kind = gr.Radio(
                            label="Question kind (click to fill the question)", elem_id="question-kind", **kind_choices
                        )
                        slot = gr.Radio(elem_id="question-slot", **slot_choices)
                method = ChoiceRadio(
                    list(METHODS),
                    value=DEFAULT_METHOD,
                    label="Explanation method",
                    info="raw: attention weights (default; peaks on the asked-about object); "
                    "gradient: attention x gradient of the answer",
                    elem_id="method",
                )
                opacity = BoundedSlider(0, 1, value=DEFAULT_OPACITY, step=0.05, label="Heatmap opacity")
            with gr.Column(scale=7, min_width=300):
                label = gr.Label(num_top_classes=3, label="Answer", elem_id="prediction")
                task_names = app.task_names(default) if default else []
                task = OpenRadio(
                    task_names,
                    value=task_names[0] if len(task_names) > 1 else None,
                    label="Task: the answer the maps explain",
                    info="this checkpoint answers one task per label column it was trained on",
                    visible=len(task_names) > 1,
                    elem_id="task",
                )
                answers = gr.Markdown(label="Answer per task", elem_id="task-answers")
                banner = gr.Markdown(label="Out of scope", elem_id="scope-banner")
                details = gr.Markdown(label="Details", elem_id="timing")
                # above the overlay: a click on a word redraws the overlay, which stays in sight below it
                words = gr.HighlightedText(
                    label="Word importance (click a word)",
                    elem_id="words",
                    interactive=False,
                )
                # JPEG: pictures sent with every answer encode much faster than as webp (the default) or
                # png (python -m mmdemo bench-app --stages shows Gradio's encoding per component)
                overlay = gr.Image(
                    label=OVERLAY_LABEL,
                    elem_id="overlay",
                    interactive=False,
                    buttons=["download"],
                    format="jpeg",
                )
                grid = gr.Image(
                    label="Every word's map",
                    elem_id="word-maps",
                    interactive=False,
                    buttons=["fullscreen"],
                    format="jpeg",
                )
                similar_panel(app, state, image)  # the most similar training examples, after each answer
        with gr.Row():
            with gr.Column(scale=3, min_width=300):
                matrix = gr.Plot(label="Word x region relevance", elem_id="word-region-matrix")
            with gr.Column(scale=1, min_width=200):
                regions = gr.Image(label="Regions", elem_id="region-grid", interactive=False, format="png", buttons=[])
        modality = gr.Plot(label="Modality contributions")
        with gr.Row():
            deletion_button = gr.Button(
                "Deletion curve (is the heatmap faithful?)", size="sm", elem_id="deletion-button"
            )
        deletion_summary = gr.Markdown(elem_id="deletion-summary")
        deletion_plot = gr.Plot(label="Deletion curve", elem_id="deletion-plot")
        with gr.Accordion("Explanation as JSON (what the API returns)", open=False, elem_id="json-accordion"):
            explanation = gr.JSON(label="Explanation", open=False)
        with gr.Accordion("Model card", open=False):
            card = gr.Markdown(app.model_card(default), elem_id="model-card")

        inputs = [image, text, checkpoint, method, opacity, owner_token, task]
        outputs = [label, explanation, overlay, words, grid, matrix, regions, modality, details, banner, answers, state]
        if saved_tab is not None:
            tab.select(pt.remember_tab, None, saved_tab, api_visibility="private", queue=False)
        # several requests at once (MMDEMO_PREDICT_CONCURRENCY): those that meet in Predictor.analyse share one
        # batch; no API name (api_name=False), which leaves "predict" to /predict (ui/api.py)
        common = dict(api_name=False, concurrency_limit=app.limits.predict_concurrency, concurrency_id="predict")
        answered = [
            button.click(pt.predict, inputs, outputs, validator=pt.check_inputs, **common),
            text.submit(pt.predict, inputs, outputs, validator=pt.check_inputs, **common),
            *(control.input(pt.rerun, inputs, outputs, **common) for control in (checkpoint, method, task)),
        ]
        if example_set is not None:  # an example answers with the checkpoint and method chosen now
            answered.append(example_set.load_input_event.then(pt.predict, inputs, outputs, **common))
        for event in answered:
            event.success(None, None, None, js=SHOW_ANSWER_JS, api_visibility="private", queue=False)
        deletion_button.click(
            pt.deletion_curve,
            [state, image],
            [deletion_plot, deletion_summary],
            api_visibility="private",
            concurrency_id="predict",
        )
        checkpoint.input(
            pt.describe, [checkpoint, owner_token], [capabilities, kind, slot, card], api_visibility="private",
            queue=False,
        )  # fmt: skip
        # also when a fine-tune selects its new checkpoint here
        checkpoint.change(
            pt.task_choices, [checkpoint, owner_token], [task, method], api_visibility="private", queue=False
        )
        for control in (kind, slot):
            control.input(
                pt.fill_question, [checkpoint, kind, slot, owner_token], text, api_visibility="private", queue=False
            )
        views = [overlay, words, grid, state]
        words.select(pt.select_word, [state, opacity, image], views, api_visibility="private", queue=False)
        opacity.release(pt.change_opacity, [state, opacity, image], views, api_visibility="private", queue=False)
        refresh.click(pt.refresh_list, [owner_token], checkpoint, api_visibility="private", queue=False)
    return PredictView(pt, checkpoint, image, text, inputs, outputs, example_set)


def answer_after(view: PredictView, event, concurrency_limit: int) -> None:
    """Once ``event`` (of another tab) has filled the inputs and opened this tab: the tab's top in
    view, the answer at once, then the answer in view, as after a click on Predict."""
    shown = event.then(None, None, None, js=SHOW_TAB_TOP_JS, api_visibility="private", queue=False)
    answered = shown.then(
        view.tab.predict,
        view.inputs,
        view.outputs,
        api_name=False,
        concurrency_limit=concurrency_limit,
        concurrency_id="predict",
    )
    answered.success(None, None, None, js=SHOW_ANSWER_JS, api_visibility="private", queue=False)
