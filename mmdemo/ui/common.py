"""Helpers shared by the tabs: input errors (shown to the visitor, logged as one line; a traceback
only for real faults) and API typing of components whose choices change.

Only Gradio's public API here: components subclass Gradio's and override ``preprocess``, with
``is_template`` (how Gradio's own templates, gradio/templates.py, reuse their parent's browser
side); the API page's typing and examples override a component's public ``api_info_as_input``
and ``example_payload``. What touches Gradio's internals is in ui/gradio_patches.py."""

from __future__ import annotations

import html
import logging
import math
import re
from pathlib import Path

import gradio as gr

log = logging.getLogger("mmdemo.ui")


def input_error(where: str, message: str) -> gr.Error:
    """A gr.Error for bad input: the server log gets one line, not a traceback; the pop-up
    renders HTML, so what may come from the user is escaped and shown as text."""
    log.warning("%s: rejected input: %s", where, message[:300])
    return gr.Error(html.escape(message, quote=False), print_exception=False)


# characters that start Markdown formatting in running text ($ opens Gradio's LaTeX)
MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~$])")


def markdown_text(text: str) -> str:
    """``text`` (a CSV's header, a label, a name: anything a visitor wrote) for running text in a
    gr.Markdown, shown as it is written: HTML escaped (``<img ...>`` reaches the page as
    ``&lt;img ...&gt;``, whatever the sanitiser does), Markdown's marks backslash-escaped (a
    backtick cannot close a code span around it), on one line."""
    one_line = " ".join(str(text).splitlines())
    return MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(one_line, quote=False))


def answer_lead(prediction, share: str) -> str:
    """How a line about one prediction starts: the answer in bold with its probability
    (``share``, already formatted), or, when the model abstains (out of scope), the abstention
    first and the answer only as its best guess."""
    label = markdown_text(prediction.label)
    if prediction.in_scope:
        return f"**{label}** ({share})"
    reasons = "; ".join(prediction.scope.get("messages") or ["this input is unlike the training data"])
    return f"**Not sure: {markdown_text(reasons)}** — its best guess would be {label} ({share})"


def code_block(text: str) -> str:
    """``text`` as a fenced code block that nothing in it can close: the fence is longer than any
    run of backticks inside (Markdown shows a code block's content as text, HTML included)."""
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip", ".7z", ".rar")


def upload_type_error(name: str, file_types: list[str]) -> str:
    """What to tell a visitor whose upload ``name`` is none of ``file_types`` (".csv", ...): a
    compressed copy of an accepted type is named as such ("data.csv.gz")."""
    wanted = " or ".join(file_types)
    path = Path(name)
    inner = Path(path.stem).suffix.lower()
    if path.suffix.lower() in COMPRESSED and inner in [t.lower() for t in file_types]:
        return f"{name!r} is compressed ({path.suffix.lower()}): upload the {inner} itself, uncompressed"
    return f"{name!r} is not a {wanted} file: upload a {wanted}"


class ChoiceRadio(gr.Radio):
    """gr.Radio that refuses a value outside its choices in the visitor's words, naming the input
    ("explanation method: 'x' is not one of raw, gradient"). Gradio 6.31's own check answers an
    API caller "Value: 'x' (type: <class 'str'>) is not in the list of choices" and logs a
    traceback."""

    is_template = True  # the browser side is gr.Radio's

    def preprocess(self, payload):
        if payload is None:
            return None
        values = [value for _, value in self.choices]
        if payload not in values:
            what = str(self.label or "the choice").lower()
            shown = ", ".join(str(v) for v in values)
            raise input_error(what, f"{what}: {str(payload)[:40]!r} is not one of {shown}")
        return payload


class OpenRadio(gr.Radio):
    """gr.Radio whose choices change with another input (a checkpoint's tasks): any short text
    passes, and the handler checks it against what it belongs to. Gradio 6.31's own check would
    refuse an API caller's value that the page's current choices lack."""

    is_template = True  # the browser side is gr.Radio's

    def preprocess(self, payload):
        return None if payload is None else str(payload)[:200]

    def api_info_as_input(self) -> dict:
        return {"type": "string"}


class BoundedSlider(gr.Slider):
    """gr.Slider whose value, from a page or an API caller, is a number within its bounds: one
    outside them is brought to the nearest bound, one that is no number is refused naming the
    input. Gradio 6.31's own check fails on a string with a TypeError and a traceback."""

    is_template = True  # the browser side is gr.Slider's

    def preprocess(self, payload) -> float:
        try:
            value = float(payload)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            what = str(self.label or "the value").lower()
            raise input_error(
                what, f"{what} must be a number from {self.minimum:g} to {self.maximum:g}, got {str(payload)[:40]!r}"
            )
        return min(max(value, self.minimum), self.maximum)


def api_type(component: gr.components.Component, schema: dict) -> gr.components.Component:
    """Override how the API page types a component's input. Gradio types a Dropdown as a
    Literal of its choices at start-up, which is wrong for lists that change (checkpoints,
    a CSV's columns); Blocks reads ``api_info_as_input`` when the component has it."""
    component.api_info_as_input = lambda: schema  # type: ignore[attr-defined]
    return component


def api_example(component: gr.components.Component, value) -> gr.components.Component:
    """The value the API page's sample code passes for this component (``example_payload``, which
    Blocks reads through ``example_inputs``): a shipped example instead of Gradio's stock image
    and "Hello!!". ``value`` may be a function giving it when the page asks (an address the app
    knows only once it is served)."""
    component.example_payload = value if callable(value) else lambda: value  # type: ignore[method-assign]
    return component


def file_example(location: str, name: str) -> dict:
    """A file as the API page's sample passes it: ``handle_file('<location>')`` (the page writes
    that for a FileData with a url); ``location`` is an address (gradio_client sends it, and the
    app downloads it) or an absolute path (the client uploads the file)."""
    return {"path": location, "url": location, "meta": {"_type": "gradio.FileData"}, "orig_name": name}


# tabs that a reload opens again when they were the open one; Predict & Explain is the first
# tab, and Fine-tune reopens itself (FinetuneTab.restore, also during training)
REOPENED_TABS = ("teach", "evaluate", "compare")


def reopen_tab(tab_id: str | None):
    """The tabs' update at page load: the tab the browser remembers as the open one, for those
    in ``REOPENED_TABS``."""
    return gr.update(selected=tab_id) if tab_id in REOPENED_TABS else gr.skip()
