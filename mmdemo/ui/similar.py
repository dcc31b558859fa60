"""The Predict tab's "Most similar training examples": under the answer, the training rows the
model sees as most alike the input (thumbnail, text, label, similarity) with one line on what
"similar" means; nothing for a checkpoint without a similar-examples index.

``SimilarPanel.show`` runs after each answer (the tab's state changes) and asks the service
(``App.similar_examples``); ``examples_html`` draws the rows. Pictures travel inline, as small
PNGs in the page, so no server file is ever named to the browser.
"""

from __future__ import annotations

import base64
import html
import io

import gradio as gr

from ..app.backend import App
from ..app.similar import SimilarExample
from ..inference.similar import MEANING
from .identity import unexpected
from .zerogpu import gpu

THUMBNAIL_PX = 64  # shown size (small pictures are enlarged without blurring)


def examples_html(examples: list[SimilarExample]) -> str:
    """The rows as an HTML table, every text escaped; "" for none."""
    if not examples:
        return ""
    rows = []
    for example in examples:
        n = example.neighbour
        if example.picture is not None:
            png = io.BytesIO()
            example.picture.save(png, format="PNG")
            data = base64.b64encode(png.getvalue()).decode("ascii")
            picture = (
                f'<img src="data:image/png;base64,{data}" alt="training image" width="{THUMBNAIL_PX}"'
                f' height="{THUMBNAIL_PX}" style="image-rendering: pixelated; object-fit: contain">'
            )
        else:
            picture = '<span title="the training image is not available">no picture</span>'
        rows.append(
            f'<tr class="similar-row"><td>{picture}</td><td style="overflow-wrap: anywhere">{html.escape(n.text)}</td>'
            f"<td><b>{html.escape(n.label)}</b></td><td>{n.similarity:.3f}</td></tr>"
        )
    return (
        '<div class="similar-examples"><p><b>Most similar training examples</b></p>'
        f'<p style="font-size: 0.9em">{html.escape(MEANING)}</p>'
        '<table style="width: 100%"><thead><tr><th>Image</th><th>Text</th><th>Label</th><th>Similarity</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


class SimilarPanel:
    """The panel's handler, bound to the app."""

    def __init__(self, app: App):
        self.app = app

    @gpu()  # ZeroGPU: the query is one short forward
    def show(self, state: dict | None, image: str | None = None) -> str:
        """The examples for the page's last answer ("" before one, for a checkpoint without an
        index, or for a state that is not this page's: it must show the page's own image)."""
        if not state or not image or state.get("image") != image or "question" not in state:
            return ""
        try:
            examples = self.app.similar_examples(
                state["checkpoint"], state["image"], state["question"], state.get("owner")
            )
        except ValueError as e:  # a broken index or an expired upload: said where the examples would be
            return f"<p>Similar training examples are not available: {html.escape(str(e))}</p>"
        except Exception as e:  # noqa: BLE001 - the server keeps serving; the log has the traceback
            raise unexpected("the similar examples", e) from None
        return examples_html(examples)


def similar_panel(app: App, state: gr.State, image: gr.Image) -> gr.HTML:
    """The panel, filled whenever the tab's answer state changes."""
    panel = SimilarPanel(app)
    view = gr.HTML("", elem_id="similar-examples")
    state.change(panel.show, [state, image], view, api_visibility="private", concurrency_id="predict")
    return view
