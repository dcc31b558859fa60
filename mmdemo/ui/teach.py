"""The Teach tab: a checkpoint learns a new label from a few uploaded pictures and the text
that goes with them (or a small CSV + zip), in seconds, without a training run (app/teach.py).
The new checkpoint is the visitor's, is selected in Predict & Explain at once, and is shown
answering the first uploaded example."""

from __future__ import annotations

import gradio as gr

from ..app.backend import App
from ..app.teach import MAX_PICTURES, Taught, teach
from .identity import owner_of, refuse, unexpected

# how far along teaching is after each stage of add_classes' progress events
STAGES = {"replay": 0.05, "encode": 0.15, "teach": 0.3, "calibrate": 0.65, "save": 0.9, "scope": 0.95}


class TeachTab:
    def __init__(self, app: App):
        self.app = app

    def teach(
        self, base, pictures, text, label, csv_file, zip_file, name, overwrite, owner_token=None,
        progress=gr.Progress(),  # noqa: B008 (how Gradio injects a progress bar)
        profile: gr.OAuthProfile | None = None,
    ):  # fmt: skip
        """Teach: the result's words, the example it answered, the Predict tab's checkpoint list
        (the new one selected), this tab's list, and the page's token (a page whose token had
        not arrived yet gets one here)."""
        owner = owner_of(self.app, owner_token, profile)
        if owner is None:
            owner_token = self.app.new_token()
            owner = self.app.owner(owner_token)
        if isinstance(pictures, str):
            pictures = [pictures]

        def report(event: dict) -> None:
            if "message" in event:
                progress(STAGES.get(event["stage"], 0.5), desc=event["message"])

        progress(0, desc="checking the examples")
        try:
            taught = teach(
                self.app, owner, base, (name or "").strip() or "taught", bool(overwrite), pictures, text, label,
                csv_file, zip_file, progress=report,
            )  # fmt: skip
        except (ValueError, FileExistsError) as e:
            raise refuse(str(e)) from None
        except Exception as e:  # noqa: BLE001 - the server keeps serving
            raise unexpected("teaching the new label", e) from None
        names = self.app.registry.names(owner)
        return (
            result_text(taught),
            taught["picture"],
            gr.update(choices=names, value=taught["checkpoint"]),
            gr.update(choices=names),
            owner_token,
        )

    def refresh(self, owner_token=None, profile: gr.OAuthProfile | None = None):
        return gr.update(choices=self.app.registry.names(owner_of(self.app, owner_token, profile)))

    @staticmethod
    def remember_tab() -> str:
        return "teach"


def result_text(taught: Taught) -> str:
    """What teaching did, in the visitor's words: the new checkpoint, its labels and examples,
    its answer on the first example, the expected accuracy, the warnings."""
    added = ", ".join(
        f"**{label}** (from {n} example{'s' if n != 1 else ''})" for label, n in taught["examples"].items()
    )
    lines = [
        f"Saved checkpoint **{taught['checkpoint']}** in {taught['seconds']:.0f} s: it now also answers {added}. "
        "It is selected in Predict & Explain; the model it started from is unchanged."
    ]
    answer = taught["answer"]
    verdict = "right" if answer["label"] == taught["expected"] else f"expected {taught['expected']}"
    line = f'Its answer on your first example ("{taught["text"]}"): **{answer["label"]}** ({answer["confidence"]:.0%}, {verdict})'
    if not answer["in_scope"]:
        line += "; flagged as unlike its training data: " + "; ".join(answer["messages"])
    lines.append(line + ".")
    accuracy = taught.get("held_out_new_accuracy")
    if accuracy is not None:
        lines.append(
            f"Each of your examples answered by a model taught without it: {accuracy:.0%} right, about what to expect"
            " on new pictures of the new label."
        )
    lines += [f"- {w[0].upper() + w[1:]}" for w in taught["warnings"]]
    lines.append(f"<small>Method: {taught['method']}.</small>")
    return "\n\n".join(lines[:3]) + ("\n\n" + "\n".join(lines[3:]) if len(lines) > 3 else "")


def teach_tab(
    app: App, predict_checkpoint: gr.Dropdown, owner_token: gr.BrowserState, saved_tab: gr.BrowserState | None = None
) -> TeachTab:
    """The tab; ``predict_checkpoint`` is Predict & Explain's checkpoint list (the new checkpoint
    is selected there)."""
    tt = TeachTab(app)
    with gr.Tab("Teach", id="teach") as tab:
        if saved_tab is not None:
            tab.select(tt.remember_tab, None, saved_tab, api_visibility="private", queue=False)
        gr.Markdown(
            "### Teach the model a new label from a few examples\n"
            f"Upload 1 to {MAX_PICTURES} pictures of something new (5 or more help), type the text that goes with"
            " them (for example the question they answer) and the new label, and press Teach: in seconds, without"
            " training again, you get a new checkpoint that answers the new label as well as the old ones."
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=300):
                pictures = gr.File(
                    file_count="multiple",
                    file_types=["image"],
                    label=f"Pictures of the new label (1-{MAX_PICTURES})",
                    elem_id="teach-pictures",
                )
                text = gr.Textbox(
                    label="Text that goes with them",
                    placeholder="e.g. What shape is the red object?",
                    elem_id="teach-text",
                )
                label = gr.Textbox(label="New label", placeholder="e.g. triangle", elem_id="teach-label")
                with gr.Accordion("Or a small CSV + zip (image, text, label; a few rows per label)", open=False):
                    csv_file = gr.File(file_types=[".csv"], label="CSV", elem_id="teach-csv")
                    zip_file = gr.File(file_types=[".zip"], label="Zip of its images", elem_id="teach-zip")
            with gr.Column(scale=2, min_width=260):
                base = gr.Dropdown(
                    app.registry.names(),
                    value=app.default_checkpoint(),
                    label="Start from",
                    elem_id="teach-base",
                    allow_custom_value=True,
                )
                name = gr.Textbox("taught", label="New checkpoint name", elem_id="teach-name")
                overwrite = gr.Checkbox(False, label="Replace my checkpoint of that name")
                button = gr.Button("Teach", variant="primary", elem_id="teach-button")
        result = gr.Markdown(elem_id="teach-result")
        picture = gr.Image(label="Your first example", elem_id="teach-example", interactive=False, height=200)
        button.click(
            tt.teach,
            [base, pictures, text, label, csv_file, zip_file, name, overwrite, owner_token],
            [result, picture, predict_checkpoint, base, owner_token],
            api_visibility="private",
            concurrency_limit=1,
            concurrency_id="teach",
        )
        tab.select(tt.refresh, [owner_token], base, api_visibility="private", queue=False)
    return tt
