"""Helpers shared by the tabs: input errors (shown to the visitor, logged as one line; a traceback
only for real faults) and API typing of components whose choices change."""

from __future__ import annotations

import html
import logging
from pathlib import Path

import gradio as gr

log = logging.getLogger("mmdemo.ui")


def input_error(where: str, message: str) -> gr.Error:
    """A gr.Error for bad input: the server log gets one line, not a traceback; the pop-up
    renders HTML, so what may come from the user is escaped and shown as text."""
    log.warning("%s: rejected input: %s", where, message[:300])
    return gr.Error(html.escape(message, quote=False), print_exception=False)


# a string parameter; with a default of None the API page shows it as "str | None", optional
OPTIONAL_STRING = {"type": "string"}


def api_type(component: gr.components.Component, schema: dict) -> gr.components.Component:
    """Override how the API page types a component's input. Gradio types a Dropdown as a
    Literal of its choices at start-up, which is wrong for lists that change (checkpoints,
    a CSV's columns); Blocks reads ``api_info_as_input`` when the component has it."""
    component.api_info_as_input = lambda: schema  # type: ignore[attr-defined]
    return component


def api_example(component: gr.components.Component, value) -> gr.components.Component:
    """The value the API page's sample code passes for this component (Blocks reads
    ``example_inputs``): a shipped example instead of Gradio's stock image and "Hello!!"."""
    component.example_inputs = lambda: value  # type: ignore[method-assign]
    return component


def file_example(path: str) -> dict:
    """A local file as the API page shows it: ``handle_file('<path>')``, relative to the
    working directory when it lies inside it (the repository root for ``python app.py``)."""
    shown = Path(path)
    try:
        shown = shown.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    # the API page writes handle_file('<url>') for a FileData with a url
    return {"path": str(shown), "url": str(shown), "meta": {"_type": "gradio.FileData"}, "orig_name": shown.name}
