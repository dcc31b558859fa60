"""Launching the app with its bounds (used by app.py and by ``python -m mmdemo stress``).

Besides the per-request limits (mmdemo/limits.py): at most MMDEMO_QUEUE_SIZE events wait in
Gradio's queue (more get "queue full"), at most MMDEMO_SESSION_CAPACITY sessions are held in
memory (each holds a copy of the page's config; the oldest go first), uploads over
MMDEMO_MAX_UPLOAD_MB get HTTP 413.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import gradio as gr
import torch
from gradio.utils import get_upload_folder
from starlette.middleware import Middleware

from ..device import resolve_device
from ..inference import torch_threads_for_serving
from ..webapp import App

SESSION_CAPACITY = int(os.environ.get("MMDEMO_SESSION_CAPACITY", "150"))
QUEUE_SIZE = int(os.environ.get("MMDEMO_QUEUE_SIZE", "64"))
MAX_BODY_MB = float(os.environ.get("MMDEMO_MAX_BODY_MB", "2"))


class BodyLimit:
    """ASGI middleware: a request body (other than a file upload, capped by max_file_size) over
    MAX_BODY_MB is answered 413 before anything reads it; a 50 MB question costs no parsing."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].rstrip("/").endswith("/upload"):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send, int(length))
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise ValueError(f"request body over {self.max_bytes} bytes")
            return message

        return await self.app(scope, counted, send)

    async def _refuse(self, send, length: int) -> None:
        body = json.dumps(
            {"error": f"the request is {length:,} bytes, over the limit of {self.max_bytes:,} (MMDEMO_MAX_BODY_MB)"}
        ).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


EMPTY_FOLDER_AGE_S = 5  # Gradio makes a folder and writes its file at once: older and empty is left over
EMPTY_FOLDER_SWEEP_S = 10


def sweep_empty_cache_folders(cache: Path, age_s: float = EMPTY_FOLDER_AGE_S) -> int:
    """Gradio's cache sweep (``delete_cache``) deletes files but keeps the folder each one was
    in (one per file, 4 kB on disk each): remove those folders once empty for ``age_s``."""
    removed = 0
    now = time.time()
    for folder in cache.glob("*"):
        try:
            if folder.is_dir() and not any(folder.iterdir()) and now - folder.stat().st_mtime > age_s:
                folder.rmdir()
                removed += 1
        except OSError:  # filled or removed meanwhile
            continue
    return removed


def _sweep_forever(cache: Path) -> None:
    while True:
        time.sleep(EMPTY_FOLDER_SWEEP_S)
        sweep_empty_cache_folders(cache)


def launch(demo: gr.Blocks, app: App, server_name: str, server_port: int, queue_size: int = QUEUE_SIZE, **kwargs):
    threads = torch_threads_for_serving(resolve_device(app.registry.device))
    if threads:  # ONNX Runtime (or the GPU) runs the model; torch's share is small operations
        torch.set_num_threads(threads)
    cache = Path(get_upload_folder())
    threading.Thread(target=_sweep_forever, args=(cache,), name="mmdemo-cache", daemon=True).start()
    return demo.queue(max_size=queue_size, default_concurrency_limit=1).launch(
        server_name=server_name,
        server_port=server_port,
        ssr_mode=False,  # advisory for the SSR proxy of Gradio 6.27-6.31
        max_file_size=f"{app.limits.max_upload_mb}mb",
        state_session_capacity=SESSION_CAPACITY,
        share=False,
        show_error=False,
        footer_links=["api"],
        app_kwargs={"middleware": [Middleware(BodyLimit, max_bytes=int(MAX_BODY_MB * 1e6))]},
        **kwargs,
    )


def main() -> None:
    """Serve the app on GRADIO_SERVER_NAME:GRADIO_SERVER_PORT (what app.py does)."""
    from . import create_demo

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = App()
    demo = create_demo(app)
    default = app.default_checkpoint()
    if default:  # load the default model while the server starts
        threading.Thread(target=app.registry.predictor, args=(default,), daemon=True).start()
    launch(
        demo, app, os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    )
