"""Helpers shared by the tabs: input errors (shown to the visitor, logged as one line; a traceback
only for real faults) and API typing of components whose choices change."""

from __future__ import annotations

import logging

import gradio as gr

log = logging.getLogger("mmdemo.ui")


def input_error(where: str, message: str) -> gr.Error:
    """A gr.Error for bad input: the server log gets one line, not a traceback."""
    log.warning("%s: rejected input: %s", where, message)
    return gr.Error(message, print_exception=False)


OPTIONAL_STRING = {"anyOf": [{"type": "string"}, {"type": "null"}]}


def api_type(component: gr.components.Component, schema: dict) -> gr.components.Component:
    """Override how the API page types a component's input. Gradio types a Dropdown as a
    Literal of its choices at start-up, which is wrong for lists that change (checkpoints,
    a CSV's columns); Blocks reads ``api_info_as_input`` when the component has it."""
    component.api_info_as_input = lambda: schema  # type: ignore[attr-defined]
    return component
