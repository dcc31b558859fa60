"""Launching the app with its bounds (used by app.py and by ``python -m mmdemo stress``).

Besides the per-request limits (mmdemo/app/settings.py): at most MMDEMO_QUEUE_SIZE events wait in
Gradio's queue (more get "queue full"), at most MMDEMO_SESSION_CAPACITY sessions are held in
memory (each holds a copy of the page's config; the oldest go first), a request body over
MMDEMO_MAX_BODY_MB gets HTTP 413 (``BodyLimit``) as do uploads over MMDEMO_MAX_UPLOAD_MB, and
Gradio's file cache is kept under its bounds (``ui.cache.CacheSweeper``). Gradio's internals are
patched by ``ui.gradio_patches`` alone. Figures: ``python -m mmdemo bench-app`` and ``stress``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
from contextlib import asynccontextmanager

import gradio as gr
import torch
from starlette.middleware import Middleware

from ..app.backend import App
from ..device import resolve_device
from ..inference.engines import torch_threads_for_serving
from . import gradio_patches
from .cache import CacheSweeper

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


def _lifespan(demo: gr.Blocks, sweeper: CacheSweeper):
    """While the server runs, count a request's files as sent when it asks to join the queue,
    admitted or not (the uploads of calls refused as "queue full" are then ordinary files, not
    uploads a visitor has yet to send, which the size cap spares until the TTL) and forget
    finished sessions; as it stops, stop sweeping and delete what the app put in the cache (what
    Gradio's own sweep did at shutdown)."""

    @asynccontextmanager
    async def lifespan(_app):
        gradio_patches.on_queue_join(demo, sweeper.mark_sent)
        sessions = asyncio.create_task(gradio_patches.forget_finished_sessions(demo))
        try:
            yield
        finally:
            sessions.cancel()
            sweeper.stop()
            sweeper.sweep(everything=True)

    return lifespan


def launch(demo: gr.Blocks, app: App, server_name: str, server_port: int, queue_size: int = QUEUE_SIZE, **kwargs):
    threads = torch_threads_for_serving(resolve_device(app.registry.device))
    if threads:  # ONNX Runtime (or the GPU) runs the model; torch's share is small operations
        torch.set_num_threads(threads)
    gradio_patches.patch_gradio()
    gradio_patches.without_gradio_cache_sweep(demo)
    sweeper = demo.cache_sweeper = CacheSweeper(demo)  # on the demo: tests and tools read it
    gradio_patches.checked_inputs(demo).on_inputs = sweeper.touch  # a visitor asking again keeps their image
    sweeper.start()
    return demo.queue(max_size=queue_size, default_concurrency_limit=1).launch(
        server_name=server_name,
        server_port=server_port,
        ssr_mode=False,  # advisory for the SSR proxy of Gradio 6.27-6.31
        max_file_size=f"{app.limits.max_upload_mb}mb",
        state_session_capacity=SESSION_CAPACITY,
        share=False,
        show_error=False,
        footer_links=["api"],
        app_kwargs={
            "middleware": [Middleware(BodyLimit, max_bytes=int(MAX_BODY_MB * 1e6))],
            "lifespan": _lifespan(demo, sweeper),
        },
        **kwargs,
    )


def serve(demo: gr.Blocks, app: App) -> None:
    """Serve on GRADIO_SERVER_NAME:GRADIO_SERVER_PORT until Ctrl-C or SIGTERM (what a container
    or a Space sends to stop), then close the app: a running fine-tune worker is told, ends at
    its next step and leaves its job resumable."""
    default = app.default_checkpoint()
    if default:  # load the default model while the server starts
        threading.Thread(target=app.registry.predictor, args=(default,), daemon=True).start()

    def stop(*_):  # Gradio's blocking loop ends on KeyboardInterrupt and closes the server
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
    try:
        launch(
            demo,
            app,
            os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
            int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        )
    except KeyboardInterrupt:  # a signal before Gradio's loop took over
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        app.close()


def main() -> None:
    """Serve the app (what app.py does)."""
    from . import create_demo

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = App()
    serve(create_demo(app), app)
