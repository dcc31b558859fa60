"""The Predict & Explain tab: what the chosen model can answer (with a question builder),
image + text -> answer, heatmap overlay, every word's map (small multiples, click a word),
word x region matrix with its numbered grid, modality contributions.

Handlers are named functions with typed, named parameters: Gradio derives the API page's
parameter names from the handler's signature, and passes event data (``gr.SelectData``) only
to a parameter annotated with the class itself.
"""

from __future__ import annotations

import time

import gradio as gr
import torch

from .. import render
from ..explain import DEFAULT_METHOD, METHODS, peak_xy
from ..imaging import decode_image
from ..relations import relation_objects
from ..webapp import App
from .common import api_example, api_type, file_example, input_error

try:  # ZeroGPU on Hugging Face Spaces: GPU-bound handlers get a GPU while they run
    import spaces

    gpu = spaces.GPU
except ImportError:

    def gpu(fn):
        return fn


DEFAULT_OPACITY = 0.55
OVERLAY_LABEL = "Where the model looked"
# after an answer arrives, bring it into view if it is not (on a phone it sits below the inputs)
SHOW_ANSWER_JS = """() => {
  const answer = document.getElementById('prediction');
  if (!answer) return;
  const box = answer.getBoundingClientRect();
  if (box.top < 0 || box.bottom > window.innerHeight) window.scrollTo({top: window.scrollY + box.top - 16});
}"""


@gpu
def predict(
    app: App,
    image: str | None,
    question: str | None,
    checkpoint: str | None = None,
    method: str | None = DEFAULT_METHOD,
    opacity: float = DEFAULT_OPACITY,
):
    """Handler of /predict: component values for every output of the Predict tab."""
    if not image:
        raise input_error("predict", "Please upload an image (or pick an example).")
    if not question or not str(question).strip():
        raise input_error("predict", "Please type a question or a description of the image.")
    checkpoint = checkpoint or app.default_checkpoint()
    method = method or DEFAULT_METHOD
    try:
        predictor = app.registry.predictor(checkpoint)
        decoded = decode_image(image, name="the image")
        start = time.perf_counter()
        prediction = predictor.predict_batch([decoded], [question], method)[0]
        contributions = predictor.modality_contributions(decoded, question)
        elapsed = (time.perf_counter() - start) * 1000
    except ValueError as e:
        raise input_error("predict", str(e)) from None
    e = prediction.explanation
    explanation = prediction.to_json()
    explanation["scores"] = {k: round(v, 4) for k, v in explanation["scores"].items()}
    relation = relation_objects(decoded, question, e.peak_xy) if method == "raw" else None
    state = {
        "image": image,
        "checkpoint": checkpoint,
        "method": method,
        "question": question,
        "words": e.words,
        "word_scores": e.word_scores,
        "heatmap": explanation["heatmap"],
        "peak_xy": explanation["peak_xy"],
        "word_maps": e.word_maps.tolist(),
        "grid": list(e.heatmap.shape),
        "relation": None
        if relation is None
        else {"kind": relation.kind, "reference": relation.reference, "answer": relation.answer},
        "selected": None,
    }
    details = (
        f"**{prediction.label}** ({prediction.scores[prediction.label]:.0%}) from `{checkpoint}`, "
        f"{method} attention. Inference {elapsed:.0f} ms on {predictor.device} (model {prediction.forward_ms:.0f} ms)."
    )
    if prediction.truncated:
        details += f" The text was longer than {predictor.config.max_tokens} tokens and was truncated."
    details += "\n\n" + _map_note(app, state)
    overlay, words, grid = _views(decoded, state, opacity)
    return (
        prediction.scores,
        explanation,
        overlay,
        words,
        grid,
        render.attention_matrix(e.words, e.token_region, tuple(e.heatmap.shape)),
        render.region_grid(decoded, tuple(e.heatmap.shape)),
        render.modality_chart(contributions),
        details,
        state,
    )


def _map_note(app: App, state: dict) -> str:
    """What the overlay shows, in words; for closest/furthest questions, which object is which."""
    relation = state["relation"]
    if relation is None:
        return (
            "The overlay shows where the model looked for the whole question (bright = more attention, "
            "magenta cross = peak). Click a word for its own map (again for the whole question); every word's "
            "map is below, the selected one framed."
        )
    _, _, benchmark = app.capabilities(state["checkpoint"])
    pointing = benchmark.get("pointing", {}).get("raw", {}).get("closest_furthest", {}).get(relation["kind"])
    measured = (
        f" On fresh scenes this checkpoint's peak falls on the referenced object in {pointing['on_reference']:.0%} "
        f"of '{relation['kind']}' questions and on the answer object in {pointing['on_answer']:.0%}."
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


def _views(image, state: dict, opacity: float):
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
    image = decode_image(state["image"], name="the image")
    return (*_views(image, state, opacity), state)


def capabilities_markdown(app: App, checkpoint: str | None) -> str:
    """The "What this model can answer" panel, from the checkpoint's config."""
    if not checkpoint:
        return "No checkpoint is available."
    try:
        labels, task, _ = app.capabilities(checkpoint)
    except (ValueError, OSError) as e:
        return f"Cannot read `{checkpoint}`: {e}"
    lines = [f"### What `{checkpoint}` can answer", ""]
    if task:
        lines.append(task.get("summary", ""))
        slot = task.get("slot", {})
        if slot:
            lines.append(f"**{slot['name'].capitalize()}s:** {', '.join(slot['values'])}.")
        kinds = "; ".join(f"{q['kind']} → {' / '.join(q['answers'])}" for q in task.get("questions", []))
        lines.append(f"**Kinds of question:** {kinds}.")
    lines.append(f"**Its {len(labels)} answers:** {', '.join(labels)}. It picks one of these for any input.")
    if task:
        lines.append("Build a question below (pick a kind and a colour), or pick an example next to the image.")
    else:
        lines.append("This checkpoint does not list its kinds of question: ask in the words of its training data.")
    return "\n\n".join(lines)


def question_builder(app: App, checkpoint: str | None) -> tuple[dict, dict]:
    """Radio settings (choices, value, visible, label) of the question builder's kind and slot
    value, from the checkpoint's task (hidden when it lists none)."""
    try:
        _, task, _ = app.capabilities(checkpoint) if checkpoint else ([], {}, {})
    except (ValueError, OSError):
        task = {}
    kinds = [q["kind"] for q in task.get("questions", [])]
    values = task.get("slot", {}).get("values", [])
    slot = task.get("slot", {}).get("name", "value").capitalize()
    return (
        dict(choices=kinds, value=None, visible=bool(kinds)),
        dict(choices=values, value=values[0] if values else None, visible=bool(values), label=slot),
    )


def build_question(app: App, checkpoint: str | None, kind: str | None, value: str | None):
    """The question for a kind and a slot value, from the checkpoint's templates."""
    if not kind or not checkpoint:
        return gr.skip()
    _, task, _ = app.capabilities(checkpoint)
    slot = task.get("slot", {}).get("name", "value")
    for q in task.get("questions", []):
        if q["kind"] == kind:
            return q["template"].replace("{" + slot + "}", value or "")
    return gr.skip()


def predict_tab(app: App, saved_tab: gr.BrowserState | None = None) -> gr.Dropdown:
    """The tab's components and events; returns the checkpoint dropdown (refreshed by the poll).
    ``saved_tab`` remembers in the browser that this tab was the open one."""
    default = app.default_checkpoint()
    with gr.Tab("Predict & Explain", id="predict") as tab:
        if saved_tab is not None:
            tab.select(lambda: "predict", None, saved_tab, api_visibility="private", queue=False)
        state = gr.State(None)
        with gr.Group(elem_id="capabilities"):
            capabilities = gr.Markdown(capabilities_markdown(app, default), elem_id="capabilities-text")
            with gr.Row():
                kind_choices, slot_choices = question_builder(app, default)
                kind = gr.Radio(
                    label="Question kind (click to fill the question)", elem_id="question-kind", **kind_choices
                )
                slot = gr.Radio(elem_id="question-slot", **slot_choices)
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=300):
                image = gr.Image(
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
                    checkpoint = api_type(
                        gr.Dropdown(
                            app.registry.names(),
                            value=default,
                            label="Checkpoint",
                            elem_id="checkpoint",
                            allow_custom_value=True,
                            scale=3,
                            min_width=160,
                        ),
                        {
                            "type": "string",
                            "additional_description": "a checkpoint name; at start-up: "
                            + ", ".join(app.registry.names())
                            + " (fine-tuned ones are added as they are saved)",
                        },
                    )
                    refresh = gr.Button("Refresh list", size="sm", scale=1, min_width=90)
                method = gr.Radio(
                    list(METHODS),
                    value=DEFAULT_METHOD,
                    label="Explanation method",
                    info="raw: attention weights (default; peaks on the asked-about object); "
                    "gradient: attention x gradient of the answer",
                    elem_id="method",
                )
                opacity = gr.Slider(0, 1, value=DEFAULT_OPACITY, step=0.05, label="Heatmap opacity")
            with gr.Column(scale=7, min_width=300):
                label = gr.Label(num_top_classes=3, label="Answer", elem_id="prediction")
                details = gr.Markdown(label="Details", elem_id="timing")
                overlay = gr.Image(label=OVERLAY_LABEL, elem_id="overlay", interactive=False, buttons=["download"])
                words = gr.HighlightedText(
                    label="Word importance (click a word)",
                    elem_id="words",
                    interactive=False,
                )
                grid = gr.Image(
                    label="Every word's map",
                    elem_id="word-maps",
                    interactive=False,
                    buttons=["fullscreen"],
                )
        with gr.Row():
            with gr.Column(scale=3, min_width=300):
                matrix = gr.Plot(label="Word x region relevance")
            with gr.Column(scale=1, min_width=200):
                regions = gr.Image(label="Regions", elem_id="region-grid", interactive=False, format="png", buttons=[])
        modality = gr.Plot(label="Modality contributions")
        with gr.Accordion("Explanation as JSON (what the API returns)", open=False, elem_id="json-accordion"):
            explanation = gr.JSON(label="Explanation", open=False)

        if examples:  # the API page's sample code uses a shipped example, so it runs as it is
            api_example(image, file_example(examples[0][0]))
            api_example(text, examples[0][1])
        outputs = [label, explanation, overlay, words, grid, matrix, regions, modality, details, state]
        inputs = [image, text, checkpoint, method, opacity]

        def predict_image(
            image: str,
            question: str,
            checkpoint: str | None = default,
            method: str = DEFAULT_METHOD,
            opacity: float = DEFAULT_OPACITY,
        ):
            """Answer a question about an image and explain the answer.

            image: the image (a file; any size, decoded server-side)
            question: the question or text about the image
            checkpoint: checkpoint name, one of the app's checkpoint list (default: the shipped model)
            method: explanation method, "raw" (default) or "gradient"
            opacity: heatmap opacity in the overlay, 0 to 1
            """
            return predict(app, image, question, checkpoint, method, opacity)

        def check_inputs(image, question, checkpoint, method, opacity):
            """Marks a missing image or question on its own input, before any model work."""
            return (
                gr.validate(bool(image), "Upload an image or pick an example."),
                gr.validate(bool(question and str(question).strip()), "Type a question, or build one above."),
                gr.validate(True, ""),
                gr.validate(True, ""),
                gr.validate(True, ""),
            )

        def rerun(image: str | None, question: str | None, checkpoint: str | None, method: str, opacity: float):
            """A new checkpoint or method answers again, so no stale result stays on screen."""
            if not image or not question or not str(question).strip():
                return (gr.skip(),) * (len(outputs) - 1) + (None,)
            return predict(app, image, question, checkpoint, method, opacity)

        common = dict(concurrency_limit=2, concurrency_id="predict")
        answered = [
            button.click(
                predict_image,
                inputs,
                outputs,
                api_name="predict",
                api_description="Answer a question about an image; returns the answer's probabilities, the "
                "explanation (tokens, token_scores, heatmap, peak_xy) and the views the app shows.",
                validator=check_inputs,
                **common,
            ),
            text.submit(predict_image, inputs, outputs, api_visibility="private", validator=check_inputs, **common),
            *(
                control.input(rerun, inputs, outputs, api_visibility="private", **common)
                for control in (checkpoint, method)
            ),
        ]
        if example_set is not None:  # an example answers with the checkpoint and method chosen now
            answered.append(
                example_set.load_input_event.then(predict_image, inputs, outputs, api_visibility="private", **common)
            )
        for event in answered:
            event.success(None, None, None, js=SHOW_ANSWER_JS, api_visibility="private", queue=False)
        checkpoint.input(
            lambda name: (capabilities_markdown(app, name), *(gr.update(**c) for c in question_builder(app, name))),
            checkpoint,
            [capabilities, kind, slot],
            api_visibility="private",
            queue=False,
        )

        def fill_question(checkpoint: str | None, kind: str | None, value: str | None):
            return build_question(app, checkpoint, kind, value)

        for control in (kind, slot):
            control.input(fill_question, [checkpoint, kind, slot], text, api_visibility="private", queue=False)

        def select_word(state: dict | None, opacity: float, selection: gr.SelectData):
            return redraw(state, opacity, selection)

        def change_opacity(state: dict | None, opacity: float):
            return redraw(state, opacity)

        views = [overlay, words, grid, state]
        words.select(select_word, [state, opacity], views, api_visibility="private", queue=False)
        opacity.release(change_opacity, [state, opacity], views, api_visibility="private", queue=False)
        refresh.click(
            lambda: gr.update(choices=app.registry.names()), None, checkpoint, api_visibility="private", queue=False
        )

    return checkpoint
