"""Who is asking, decided on the server, and how refusals are shown.

- A browser visitor holds a secret owner token (256 random bits) made by the server at page
  load and kept in the browser (``gr.BrowserState``, so a reload keeps it). The owner is the
  token's hash (``registry.owner_id``): presenting a token proves possession; a token that
  names nobody yet simply owns nothing.
- A ``gradio_client`` user gets ``owner_token`` back from ``/start_finetune`` and passes it as
  the last argument of later calls; the same ``Client`` object also keeps it in its session
  (``gr.State``, held on the server, never sent to the client).
- When the Space enables sign-in (``MMDEMO_HF_SIGNIN=1`` and ``hf_oauth: true`` in the Space's
  README), the signed-in Hugging Face user is the owner (``gr.OAuthProfile``).
- In shared mode (``MMDEMO_SHARED=1``) everyone is the same owner.
"""

from __future__ import annotations

import html
import logging
import os
import secrets

import gradio as gr

from ..limits import data_dir
from ..webapp import App
from .common import input_error

log = logging.getLogger("mmdemo.ui")

STORAGE_KEY = "mmdemo-owner-token"


def browser_secret() -> str:
    """The key the browser's copy of the token is encrypted with; persisted in the data folder
    (or MMDEMO_SECRET) so that a server restart does not make every visitor's token unreadable."""
    explicit = os.environ.get("MMDEMO_SECRET", "").strip()
    if explicit:
        return explicit
    path = data_dir() / "browser-secret"
    if not path.is_file():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def token_components() -> tuple[gr.BrowserState, gr.State]:
    """(the browser's token, the session's token for API clients)."""
    return gr.BrowserState(None, storage_key=STORAGE_KEY, secret=browser_secret()), gr.State(None, time_to_live=3600)


def owner_of(app: App, token, session_token, profile) -> str | None:
    """The request's owner, or None for a visitor without a token (sees shipped checkpoints)."""
    username = getattr(profile, "username", None) if profile is not None else None
    token = token if isinstance(token, str) and token else session_token
    if not token and not username and not app.shared:
        return None
    try:
        return app.owner(token, username)
    except ValueError as e:
        raise refuse(str(e)) from None


def refuse(message: str) -> gr.Error:
    """A refusal shown as text and logged as one line (common.input_error)."""
    return input_error("refused", message)


def unexpected(action: str, error: Exception) -> gr.Error:
    """An error that is not the input's fault: the traceback goes to the log, the visitor gets its
    type and what was being done (never a server path)."""
    log.exception("%s failed", action)
    return gr.Error(html.escape(f"{action} failed: {type(error).__name__}", quote=False), print_exception=False)
