"""Who is asking, decided on the server from a token the caller holds, and how refusals are shown.

- The owner of a request is ``App.owner(token, hf_username)``, computed on the server for every
  request that reads or writes a visitor's things (checkpoints, jobs, evaluations, ratings). A
  Gradio session hash is never an identity: it travels in every request and anyone can send
  another's.
- A browser visitor holds a secret owner token (256 random bits) made by the server at page
  load and kept by the browser in its localStorage (``gr.BrowserState``), like a session cookie:
  a reload keeps it, and it is sent with every event as an input. The owner is the token's hash
  (``registry.owner_id``): presenting a token proves possession; a token that names nobody yet
  simply owns nothing.
- ``gr.BrowserState`` encrypts what it stores with a key that Gradio sends to every browser in
  ``GET /config``; that key protects nothing from anyone who can load the page, so it is the
  public constant ``PUBLIC_STORAGE_KEY`` and the server keeps no secret of its own. What keeps a
  token private is that only its browser holds it. (A token stored by a release that encrypted
  it with a per-server key cannot be read after the upgrade: that browser gets a new token.)
- A ``gradio_client`` user gets ``owner_token`` back from ``/start_finetune`` and passes it as
  the last argument of every later call; nothing about it is kept in the client's session.
- When the Space enables sign-in (``MMDEMO_HF_SIGNIN=1`` and ``hf_oauth: true`` in the Space's
  README), the signed-in Hugging Face user is the owner (``gr.OAuthProfile``).
- In shared mode (``MMDEMO_SHARED=1``) everyone is the same owner; each browser's token still
  keeps its own evaluation apart (``visitor_of``).
"""

from __future__ import annotations

import html
import logging
from typing import Any

import gradio as gr

from ..app.backend import App
from .common import input_error

log = logging.getLogger("mmdemo.ui")

STORAGE_KEY = "mmdemo-owner-token"
# a page's event sent before the page received its token (just after it loaded)
PAGE_NOT_READY = "The page is still starting: wait a moment and try again (or reload the page)."
# Public by design (see the module docstring): Gradio publishes a BrowserState's key in /config.
PUBLIC_STORAGE_KEY = "mmdemo-public-browser-storage"


def browser_state(default: Any, storage_key: str) -> gr.BrowserState:
    """A value kept in the visitor's browser across reloads, under the public key."""
    return gr.BrowserState(default, storage_key=storage_key, secret=PUBLIC_STORAGE_KEY)


def token_component() -> gr.BrowserState:
    """The visitor's owner token, kept in their browser (filled at page load)."""
    return browser_state(None, STORAGE_KEY)


def _username(profile) -> str | None:
    return getattr(profile, "username", None) if profile is not None else None


def owner_of(app: App, token, profile=None) -> str | None:
    """The request's owner, or None for a caller without a token (sees shipped checkpoints)."""
    username = _username(profile)
    token = token if isinstance(token, str) and token else None
    if not token and not username and not app.shared:
        return None
    try:
        return app.owner(token, username)
    except ValueError as e:
        raise refuse(str(e)) from None


def visitor_of(app: App, token, profile=None) -> str:
    """Whose evaluation, stop button and ratings a request acts on (``App.visitor``); refused
    without a token, since results kept for nobody could be read by anybody."""
    token = token if isinstance(token, str) and token else None
    try:
        return app.visitor(token, _username(profile))
    except ValueError:  # only the page asks (no API endpoint keeps an evaluation): its own words
        raise refuse(PAGE_NOT_READY) from None


def refuse(message: str) -> gr.Error:
    """A refusal shown as text and logged as one line (common.input_error)."""
    return input_error("refused", message)


def unexpected(action: str, error: Exception) -> gr.Error:
    """An error that is not the input's fault: the traceback goes to the log, the visitor gets its
    type and what was being done (never a server path)."""
    log.exception("%s failed", action)
    return gr.Error(html.escape(f"{action} failed: {type(error).__name__}", quote=False), print_exception=False)
