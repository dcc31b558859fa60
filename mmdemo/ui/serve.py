"""Launching the app with its bounds (used by app.py and by ``python -m mmdemo stress``).

Besides the per-request limits (mmdemo/app/settings.py): at most MMDEMO_QUEUE_SIZE events wait in
Gradio's queue (more get "queue full"), at most MMDEMO_SESSION_CAPACITY sessions are held in
memory (each holds a copy of the page's config; the oldest go first), uploads over
MMDEMO_MAX_UPLOAD_MB get HTTP 413, and Gradio's file cache is kept under its bounds
(``CacheSweeper``: MMDEMO_CACHE_TTL_MIN, MMDEMO_CACHE_MAX_MB, MMDEMO_CACHE_MIN_AGE_S).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import os
import signal
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

import gradio as gr
import torch
from gradio.utils import get_upload_folder
from starlette.middleware import Middleware

from ..app.backend import App
from ..app.settings import CacheLimits
from ..device import resolve_device
from ..inference.engines import torch_threads_for_serving
from .common import BoundedSlider, input_error, upload_type_error

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
CACHE_SWEEP_S = 2  # short, so the cache overshoots its cap by at most ~2 s of traffic
EMPTY_FOLDER_SWEEP_S = 30

log = logging.getLogger(__name__)


def sweep_empty_cache_folders(cache: Path, age_s: float = EMPTY_FOLDER_AGE_S) -> int:
    """Remove folders of the cache (one per file, 4 kB on disk each) left empty for ``age_s``."""
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


def _file_paths(value, found: set[str]) -> None:
    """Paths of the files (FileData dicts, ``{"path": ...}``) anywhere in an event's input data."""
    if isinstance(value, dict):
        if isinstance(value.get("path"), str):
            found.add(os.path.abspath(value["path"]))
        for item in value.values():
            if isinstance(item, (dict, list, tuple)):
                _file_paths(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _file_paths(item, found)


class CacheSweeper:
    """Keeps Gradio's file cache bounded (``CacheLimits``). A file is "used" when uploaded,
    written, or sent in a request (its modification time, touched on each use).

    - Never deleted: a file a queued or running request refers to, the shipped examples
      (``keep_in_cache``), a file used within ``min_age_s``.
    - Deleted when unused for ``ttl_min``.
    - While the cache is over ``max_mb``, the least recently used go first, except what a
      visitor's page still holds: the last file each input of a live session sent (Gradio keeps
      at most MMDEMO_SESSION_CAPACITY sessions), and uploads no request has sent yet (a
      training zip while its visitor picks the columns). Output images, and uploads a page has
      replaced, go first: they make the churn of a steady load.

    Replaces Gradio's own ``delete_cache`` sweep, which in Gradio 6.31 iterates the live sets of
    cached files while requests add to them: the first sweep that meets a request in progress
    raises "Set changed size during iteration", its task dies silently and nothing is deleted
    again (the cache grew 15 MB/min at 4 requests/s, without end). Here the sets are copied
    before reading, every sweep is guarded, and deleted paths are dropped from the sets (which
    Gradio never shrinks: they would grow in memory too).

    Only files this app tracks are considered (its uploads, outputs and example copies), so a
    cache folder shared with other Gradio apps (the default ``/tmp/gradio``) loses nothing of
    theirs."""

    def __init__(self, demo: gr.Blocks, limits: CacheLimits | None = None):
        self.demo = demo
        self.limits = limits or CacheLimits.from_env()
        self.cache = Path(get_upload_folder())
        self._sent: set[str] = set()  # files some request has sent
        self._missing: set[str] = set()  # tracked but not on disk at the last pass
        self._stop = threading.Event()

    # --- what must stay ------------------------------------------------------------------
    def tracked(self) -> set[str]:
        files: set[str] = set()
        for file_set in list(self.demo.temp_file_sets):
            files.update(file_set.copy())  # one C call: no request can change it half-way
        return files

    def in_flight(self) -> set[str]:
        """Files referred to by an event waiting in Gradio's queue or running (private to
        gradio.queueing: read defensively, an empty set if its shape changes)."""
        events = getattr(getattr(self.demo, "_queue", None), "event_ids_to_events", None) or {}
        found: set[str] = set()
        for event in list(events.values()):
            _file_paths(getattr(getattr(event, "data", None), "data", None), found)
        return found

    def held(self) -> set[str]:
        """Files live sessions last sent for their inputs (Gradio's SessionState keeps each
        input's last value; read defensively)."""
        sessions = getattr(getattr(self.demo, "state_holder", None), "session_data", None) or {}
        found: set[str] = set()
        for session in list(sessions.values()):
            configs = getattr(session, "config_values", {})
            _file_paths(configs.made() if isinstance(configs, LazyConfigs) else list(configs.values()), found)
        return found

    def unsent_uploads(self) -> set[str]:
        return {os.path.abspath(p) for p in self.demo.upload_file_set.copy()} - self._sent

    def kept(self) -> set[str]:
        files: set[str] = set()
        for block in list(self.demo.blocks.values()):
            files.update(os.path.abspath(p) for p in list(getattr(block, "keep_in_cache", ())))
        return files

    def mark_sent(self, inputs) -> None:
        found: set[str] = set()
        _file_paths(inputs, found)
        self._sent.update(p for p in found if p.startswith(os.path.abspath(self.cache) + os.sep))

    def touch(self, inputs) -> None:
        """Mark the cached files a request sends as used now (least recently used goes first)."""
        found: set[str] = set()
        _file_paths(inputs, found)
        for path in found:
            if path.startswith(os.path.abspath(self.cache) + os.sep):
                self._sent.add(path)
                try:
                    os.utime(path)
                except OSError:
                    pass

    # --- the sweep -----------------------------------------------------------------------
    def sweep(self, now: float | None = None, everything: bool = False) -> dict:
        """One pass: delete what the bounds say (``everything``: all but the kept examples, as
        the server stops); return how many files went and what is left."""
        now = time.time() if now is None else now
        ttl_s, cap = self.limits.ttl_min * 60, self.limits.max_mb * 1e6
        kept = self.kept()
        never = kept if everything else kept | self.in_flight()
        not_for_space = set() if everything else self.held() | self.unsent_uploads()
        files = []  # (last used, bytes on disk, path)
        missing: set[str] = set()
        tracked = self.tracked()
        self._sent.intersection_update({os.path.abspath(p) for p in tracked})  # one C call; bounded
        for path in tracked:
            try:
                st = os.stat(path)
            except OSError:
                missing.add(path)
                continue
            files.append((st.st_mtime, st.st_blocks * 512 + 4096, path))  # + its own folder
        gone = missing & self._missing  # missing twice: deleted by someone else (an upload
        self._missing = missing - gone  # is listed a moment before its file is in place)
        total = sum(size for _, size, _ in files)
        deleted = 0
        for used, size, path in sorted(files):  # least recently used first
            expired = now - used > ttl_s
            if not (everything or expired or total > cap):
                break  # the rest are newer
            if not everything and not expired and now - used < self.limits.min_age_s:
                break  # the rest are newer still
            key = os.path.abspath(path)
            if key in never or (not expired and key in not_for_space):
                continue
            if self._delete(path, None if everything else used):
                gone.add(path)
                total -= size
                deleted += 1
        if gone:
            for file_set in list(self.demo.temp_file_sets):
                file_set.difference_update(gone)  # one C call
        return {"deleted": deleted, "files": len(files) - deleted, "mb": round(total / 1e6, 2)}

    @staticmethod
    def _delete(path: str, used: float | None) -> bool:
        try:
            if used is not None and os.stat(path).st_mtime != used:  # used again since it was read: keep it
                return False
            os.remove(path)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        try:
            os.rmdir(os.path.dirname(path))  # its per-file folder, when nothing else is in it
        except OSError:
            pass
        return True

    # --- in the background ---------------------------------------------------------------
    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="mmdemo-cache", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        last_folders = time.monotonic()
        seen_running = False
        while not self._stop.wait(CACHE_SWEEP_S):
            if self.demo.is_running:
                seen_running = True
            elif seen_running:  # demo.close()
                return
            try:  # never let one bad pass end the sweeping (what happened to Gradio's)
                self.sweep()
                if time.monotonic() - last_folders > EMPTY_FOLDER_SWEEP_S:
                    sweep_empty_cache_folders(self.cache)
                    last_folders = time.monotonic()
            except Exception:  # noqa: BLE001
                log.exception("cache sweep failed (will retry)")


SESSION_SWEEP_S = 30


async def forget_finished_sessions(demo: gr.Blocks) -> None:
    """Gradio 6.31's queue keeps, for every session that ever sent an event, a set of its pending
    event ids (left behind, empty, when they finish: one per visitor, never removed) and a
    message queue (up to 2,000 of them). Drop both for a session whose set has stayed empty for
    a whole pass (its events answered, its stream closed). Runs in the server's event loop,
    where Gradio reads them, so no request sees them change half-way."""
    empty_before: set[str] = set()
    while True:
        await asyncio.sleep(SESSION_SWEEP_S)
        queue = getattr(demo, "_queue", None)
        pending = getattr(queue, "pending_event_ids_session", None)
        messages = getattr(queue, "pending_messages_per_session", None)
        if not isinstance(pending, dict) or messages is None:
            continue
        empty = {session for session, ids in pending.items() if not ids}
        for session in empty & empty_before:
            del pending[session]
            messages.pop(session, None)
        empty_before = empty - empty_before


def _lifespan(demo: gr.Blocks, sweeper: CacheSweeper):
    """While the server runs, forget finished sessions; as it stops, stop sweeping and delete
    what the app put in the cache (what Gradio's own sweep did at shutdown)."""

    @asynccontextmanager
    async def lifespan(_app):
        _mark_files_sent_on_join(demo, sweeper)
        sessions = asyncio.create_task(forget_finished_sessions(demo))
        try:
            yield
        finally:
            sessions.cancel()
            sweeper.stop()
            sweeper.sweep(everything=True)

    return lifespan


def _mark_files_sent_on_join(demo: gr.Blocks, sweeper: CacheSweeper) -> None:
    """A request's files count as sent when it asks to join the queue, admitted or not: the
    uploads of calls refused as "queue full" are then ordinary files, not uploads a visitor
    has yet to send (which the size cap spares until the TTL)."""
    queue = demo._queue
    push = queue.push

    async def push_and_mark(body, *args, **kwargs):
        sweeper.mark_sent(getattr(body, "data", None))
        return await push(body, *args, **kwargs)

    queue.push = push_and_mark


class LazyConfigs(dict):
    """A session's copy of the page's config (Gradio's ``SessionState.config_values``), made per
    block when first needed instead of for every block when the session starts.

    Gradio 6.31 builds a config for each of the page's blocks (hundreds here, each through
    ``inspect.signature``) for every new session, on the server's event loop. A REST call
    (``/gradio_api/call/predict``) is a new session each time: that was ~14 ms of every such
    /predict, and of every other request waiting behind it. What Gradio reads a session's
    config for: the inputs and outputs of its events (their entries are made as they are
    updated, as before) and deep links (every entry: ``items()``/``values()`` make the rest).
    """

    def __init__(self, blocks_config, ids):
        super().__init__()
        self._blocks_config, self._ids = blocks_config, list(ids)

    def made(self) -> list:
        """The entries made so far, making none (what ``CacheSweeper.held`` walks)."""
        return list(super().values())

    def _make_all(self) -> None:
        for key in self._ids:
            if not super().__contains__(key) and key in self._blocks_config.blocks:
                super().__setitem__(key, self._blocks_config.config_for_block(key, [], self._blocks_config.blocks[key]))

    def items(self):
        self._make_all()
        return super().items()

    def values(self):
        self._make_all()
        return super().values()


def lazy_session_configs() -> None:
    """Make new Gradio sessions start with a ``LazyConfigs`` (once per process)."""
    from gradio.state_holder import SessionState

    start = SessionState.__init__
    if getattr(start, "lazy_configs", False):
        return

    class _NoBlocks:  # the page's config, but no blocks to make entries for
        def __init__(self, blocks):
            self.default_config, self.blocks = blocks.default_config, {}

    def __init__(self, blocks):
        start(self, _NoBlocks(blocks))
        self.config_values = LazyConfigs(
            self.blocks_config, [k for k in self.blocks_config.blocks if k in blocks.blocks]
        )

    __init__.lazy_configs = True
    SessionState.__init__ = __init__


def race_free_image_cache() -> None:
    """Gradio 6.31 saves each output picture under the hash of its bytes by rewriting the file
    in place, even when it is there already: two requests with the same answer picture (two
    visitors asking the same question of the same scene) write the same file while the first
    one's browser reads it, which then gets a truncated picture ("peer closed connection
    without sending complete message body" at 4 concurrent clients). Here a picture already in
    the cache is only marked used (what ``CacheSweeper`` goes by); a new one is written under a
    temporary name and renamed into place, so a reader sees all of it or none."""
    from gradio import processing_utils

    if getattr(processing_utils.save_pil_to_cache, "race_free", False):
        return

    def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        data = processing_utils.encode_pil_to_bytes(img, format)
        folder = Path(cache_dir) / processing_utils.hash_bytes(data)
        folder.mkdir(exist_ok=True, parents=True)
        path = (folder / f"{name}.{format}").resolve()
        try:
            os.utime(path)
        except FileNotFoundError:
            partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
            partial.write_bytes(data)
            os.replace(partial, path)
        return str(path)

    save_pil_to_cache.race_free = True
    processing_utils.save_pil_to_cache = save_pil_to_cache


PATCHED_GRADIO = "6.31."  # the Gradio whose private code the patches here were written against


def check_patched_gradio() -> None:
    """Refuse to start on a Gradio other than the one the patches below were written against, or
    one whose patched private functions are gone (a patch would then silently do nothing)."""
    from gradio.components.file import File

    if not gr.__version__.startswith(PATCHED_GRADIO):
        raise RuntimeError(
            f"mmdemo's Gradio patches (mmdemo/ui/serve.py) were written for Gradio {PATCHED_GRADIO}x; installed:"
            f" {gr.__version__}. Install the version in requirements.txt, or check each patch against it."
        )
    if not callable(getattr(File, "_process_single_file", None)):
        raise RuntimeError("gradio.components.file.File._process_single_file is gone: mmdemo/ui/serve.py patches it")


def file_uploads_without_strays() -> None:
    """Gradio 6.31's ``File._process_single_file`` (gradio/components/file.py) makes a
    ``NamedTemporaryFile(delete=False)`` at the root of the file cache for every file it hands a
    handler as a path, then drops it unused and undeleted: two empty ``tmp*`` files per CSV + zip
    request, in no set of cached files, so no sweep ever removes them. Its file-type check raises
    a gr.Error naming the accepted types as a Python list, logged with a traceback. Here a path is
    handed over as it is, with no temporary; a file of another type gets ``upload_type_error``'s
    message ("'data.csv.gz' is compressed (.gz): ..."), logged as one line."""
    from gradio.components.file import File
    from gradio.utils import NamedString
    from gradio_client import utils as client_utils

    original = File._process_single_file
    if getattr(original, "no_strays", False):
        return

    def _process_single_file(self, f):
        if self.type != "filepath":
            return original(self, f)
        if self.file_types and not client_utils.is_valid_file(f.path, self.file_types):
            name = f.orig_name or Path(f.path).name
            raise input_error("upload", upload_type_error(name, list(self.file_types)))
        return NamedString(f.path)

    _process_single_file.no_strays = True
    File._process_single_file = _process_single_file


def number_problem(name: str, value, minimum: float | None, maximum: float | None) -> str | None:
    """Why ``value`` sent for the number input ``name`` is refused (None: it is fine)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"{name} must be a number, got {str(value)[:40]!r}"
    if minimum is not None and value < minimum:
        return f"{name} must be at least {minimum:g}, got {value:g}"
    if maximum is not None and value > maximum:
        return f"{name} must be at most {maximum:g}, got {value:g}"
    return None


def _numbers_checked_in_words(demo: gr.Blocks) -> None:
    """Gradio 6.31's Number and Slider preprocessing (gradio/components/number.py,
    ``raise_if_out_of_bounds`` and ``round_to_precision``) compares and rounds whatever a client
    sends: a string fails with a TypeError (a traceback in the log, no message for the caller),
    a number out of bounds gets "Value 0.9 is greater than maximum value 0.5." and a traceback.
    Every event's inputs pass through ``validate_inputs`` first: numbers are checked there and
    refused naming the input as its caller knows it: an API endpoint's parameter as the API page
    names it, a page's field by its label (a BoundedSlider checks its own)."""
    validate = demo.validate_inputs

    def validate_numbers(block_fn, inputs: list) -> None:
        validate(block_fn, inputs)
        names = None
        for i, block in enumerate(block_fn.inputs):
            if i >= len(inputs) or isinstance(block, BoundedSlider) or not isinstance(block, (gr.Number, gr.Slider)):
                continue
            if names is None:
                names = []
                if getattr(block_fn, "api_visibility", "public") != "private" or not block.label:
                    try:
                        names = list(inspect.signature(block_fn.fn).parameters)
                    except (TypeError, ValueError):
                        pass
            name = names[i] if i < len(names) else str(block.label or f"input {i + 1}")
            problem = number_problem(name, inputs[i], block.minimum, block.maximum)
            if problem:
                raise input_error("number", problem)

    demo.validate_inputs = validate_numbers


def _touch_inputs_when_used(demo: gr.Blocks, sweeper: CacheSweeper) -> None:
    """Every event's inputs pass through ``validate_inputs`` before preprocessing: mark their
    files used there, so a visitor asking again about their image keeps it."""
    validate = demo.validate_inputs

    def validate_and_touch(block_fn, inputs: list) -> None:
        validate(block_fn, inputs)
        sweeper.touch(inputs)

    demo.validate_inputs = validate_and_touch


def launch(demo: gr.Blocks, app: App, server_name: str, server_port: int, queue_size: int = QUEUE_SIZE, **kwargs):
    threads = torch_threads_for_serving(resolve_device(app.registry.device))
    if threads:  # ONNX Runtime (or the GPU) runs the model; torch's share is small operations
        torch.set_num_threads(threads)
    check_patched_gradio()
    lazy_session_configs()
    race_free_image_cache()
    file_uploads_without_strays()
    # Gradio recomputes its monitoring summary (a pandas group-by over up to 10,000 past events)
    # after every event, for a dashboard that is off here: ~3 ms of CPU per /predict on a fresh
    # server, growing with the events held. Every 1,000 events, over the last 1,000, instead.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1000")
    demo.delete_cache = None  # Gradio's sweep dies under load (CacheSweeper): ours replaces it
    sweeper = demo.cache_sweeper = CacheSweeper(demo)  # on the demo: tests and tools read it
    _touch_inputs_when_used(demo, sweeper)
    _numbers_checked_in_words(demo)
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
