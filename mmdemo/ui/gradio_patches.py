"""Every touch of Gradio's private code, in one module, checked at start-up.

mmdemo works around a few bugs and gaps of Gradio 6.31 by reading or replacing code that Gradio
does not document: its queue's and sessions' records and its file cache's sets are read, three
of its functions are replaced, and two methods of a running demo (``validate_inputs``, its
queue's ``push``) are wrapped. Each patch below names what it works around (the Gradio file and
function, what goes wrong) and why the app needs it. ``check`` (run by ``create_demo``) refuses
to start on a Gradio other than the one they were written against, or on one where anything they
read or replace is missing or has changed shape, naming it: a patch of a function that is no
longer called would otherwise do nothing, silently. The rest of mmdemo/ui uses Gradio's public
API; ``ui/launch.py`` applies the patches and ``ui/cache.py`` bounds the file cache through
``GradioFiles``. Each patch is pinned by a behaviour test in tests/ui/test_gradio_patches.py or
tests/ui/test_cache_bound.py; the costs they remove are measured by ``python -m mmdemo
bench-app`` and ``python -m mmdemo stress``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from .common import BoundedSlider, input_error, upload_type_error

WRITTEN_FOR = "6.31."  # the Gradio (requirements.txt) whose private code the patches were written against
HERE = "mmdemo/ui/gradio_patches.py"


# --- the start-up check ------------------------------------------------------------------------


def _takes(*names: str, coroutine: bool = False) -> Callable[[object], bool]:
    def shape(value) -> bool:
        if not callable(value) or (coroutine and not inspect.iscoroutinefunction(value)):
            return False
        try:
            return tuple(inspect.signature(value).parameters)[: len(names)] == names
        except (TypeError, ValueError):
            return False

    shape.text = f"{'a coroutine function' if coroutine else 'a function'} ({', '.join(names)})"
    return shape


def _is(kind: type, what: str) -> Callable[[object], bool]:
    def shape(value) -> bool:
        return isinstance(value, kind)

    shape.text = what
    return shape


def _has_field(name: str) -> Callable[[object], bool]:
    def shape(value) -> bool:
        return name in (getattr(value, "model_fields", None) or {})

    shape.text = f"a data model with a {name!r} field"
    return shape


def _sets(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, set) for item in value)


_sets.text = "a list of sets"


def _anything(value) -> bool:
    return True


_anything.text = "present"


def _unset(value) -> bool:
    return value is None


_unset.text = "None until the event is queued"


@dataclass(frozen=True)
class Private:
    """Something of Gradio's that a patch reads or replaces. ``where`` is its dotted path from an
    importable module ("gradio.queueing.Queue.push"), or from an object the check makes or is
    given: ``Blocks()`` (the demo), ``Event()`` (a queue's event), ``SessionState()`` (a
    visitor's session), ``BlockFunction()`` (one of the demo's events), ``Image()`` (a component)."""

    where: str
    shape: Callable[[object], bool]
    needed_by: str


NEEDS: tuple[Private, ...] = (
    # lazy_session_configs
    Private("gradio.state_holder.SessionState.__init__", _takes("self", "blocks"), "lazy_session_configs"),
    Private("SessionState().blocks_config.blocks", _is(dict, "a dict"), "lazy_session_configs"),
    Private(
        "SessionState().blocks_config.config_for_block", _takes("_id", "rendered_ids", "block"), "lazy_session_configs"
    ),
    Private("SessionState().config_values", _is(dict, "a dict"), "lazy_session_configs"),
    Private("Blocks().default_config", _anything, "lazy_session_configs"),
    Private("Blocks().blocks", _is(dict, "a dict"), "lazy_session_configs"),
    # race_free_image_cache
    Private(
        "gradio.processing_utils.save_pil_to_cache",
        _takes("img", "cache_dir", "name", "format"),
        "race_free_image_cache",
    ),
    Private("gradio.processing_utils.encode_pil_to_bytes", _takes("pil_image", "format"), "race_free_image_cache"),
    Private("gradio.processing_utils.hash_bytes", _takes("bytes"), "race_free_image_cache"),
    # file_uploads_without_strays
    Private("gradio.components.file.File._process_single_file", _takes("self", "f"), "file_uploads_without_strays"),
    Private("gradio.utils.NamedString", _is(type, "a class"), "file_uploads_without_strays"),
    Private("gradio_client.utils.is_valid_file", _takes("file_path", "file_types"), "file_uploads_without_strays"),
    # InputChecks
    Private("gradio.blocks.Blocks.validate_inputs", _takes("self", "block_fn", "inputs"), "InputChecks"),
    Private("BlockFunction().inputs", _is(list, "a list"), "InputChecks"),
    Private("BlockFunction().fn", _anything, "InputChecks"),
    Private("BlockFunction().api_visibility", _is(str, "a string"), "InputChecks"),
    # bound_queue_analytics
    Private("Blocks()._queue.ANALYTICS_MAX_EVENTS", _is(int, "an int"), "bound_queue_analytics"),
    Private("Blocks()._queue.ANAYLTICS_CACHE_FREQUENCY", _is(int, "an int"), "bound_queue_analytics"),
    # GradioFiles (Gradio's own cache sweep replaced)
    Private("gradio.utils.get_upload_folder", _takes(), "GradioFiles"),
    Private("Blocks().delete_cache", _anything, "GradioFiles"),
    Private("Blocks().temp_file_sets", _sets, "GradioFiles"),
    Private("Blocks().upload_file_set", _is(set, "a set"), "GradioFiles"),
    Private("Blocks().keep_in_cache", _is(set, "a set"), "GradioFiles"),
    Private("Blocks().is_running", _is(bool, "a bool"), "GradioFiles"),
    Private("Blocks()._queue.event_ids_to_events", _is(dict, "a dict"), "GradioFiles"),
    Private("Event().data", _unset, "GradioFiles"),
    Private("gradio.data_classes.PredictBodyInternal", _has_field("data"), "GradioFiles"),
    Private("Blocks().state_holder.session_data", _is(dict, "a dict"), "GradioFiles"),
    # forget_finished_sessions, on_queue_join
    Private("Blocks()._queue.pending_event_ids_session", _is(dict, "a dict"), "forget_finished_sessions"),
    Private("Blocks()._queue.pending_messages_per_session", _is(dict, "a dict"), "forget_finished_sessions"),
    Private(
        "gradio.queueing.Queue.push", _takes("self", "body", "request", "username", coroutine=True), "on_queue_join"
    ),
    # plot_value
    Private("gradio.components.plot.PlotData", _has_field("plot"), "plot_value"),
    # inline_image_to_cache
    Private("gradio.processing_utils.extract_base64_data", _takes("x"), "inline_image_to_cache"),
    Private(
        "gradio.processing_utils.save_bytes_to_cache", _takes("data", "file_name", "cache_dir"), "inline_image_to_cache"
    ),
    Private("Image().GRADIO_CACHE", _is(str, "a string"), "inline_image_to_cache"),
    # outputs_postprocessor (bench-app --stages)
    Private(
        "gradio.blocks.Blocks.postprocess_data",
        _takes("self", "block_fn", "predictions", "state", coroutine=True),
        "outputs_postprocessor",
    ),
    Private("Image().temp_files", _is(set, "a set"), "inline_image_to_cache"),
)

_MISSING = object()


def _probe() -> gr.Blocks:
    """A page with one event: what the check looks at when it is given no demo."""
    with gr.Blocks(analytics_enabled=False) as probe:
        text = gr.Textbox()
        gr.Button().click(lambda value: value, text, text)
    return probe


def _roots(demo: gr.Blocks) -> dict[str, Callable[[], object]]:
    """The objects a ``Private.where`` may start from, made when first needed."""
    from gradio import queueing
    from gradio.state_holder import SessionState

    def block_function():
        if not demo.fns:
            raise AttributeError("the demo has no events to look at")
        return next(iter(demo.fns.values()))

    return {
        "Blocks()": lambda: demo,
        "BlockFunction()": block_function,
        "SessionState()": lambda: SessionState(demo),
        "Event()": lambda: queueing.Event(None, SimpleNamespace(concurrency_id="check"), None, None),
        "Image()": lambda: gr.Image(),
    }


def _find(where: str, roots: dict[str, Callable[[], object]], made: dict[str, object]):
    """The object at ``where``, or _MISSING."""
    head, *attributes = where.split(".")
    if head in roots:
        try:
            if head not in made:
                made[head] = roots[head]()
            value = made[head]
        except (AttributeError, TypeError):
            return _MISSING
    else:  # the longest importable module prefix
        for cut in range(len(attributes), -1, -1):
            try:
                value = importlib.import_module(".".join([head, *attributes[:cut]]))
            except ImportError:
                continue
            attributes = attributes[cut:]
            break
        else:
            return _MISSING
    for name in attributes:
        value = getattr(value, name, _MISSING)
        if value is _MISSING:
            return _MISSING
    return value


def check(demo: gr.Blocks | None = None, needs: tuple[Private, ...] = NEEDS) -> None:
    """Refuse to run on a Gradio other than ``WRITTEN_FOR``, or one where something a patch
    reads or replaces is missing or has another shape: a RuntimeError names each one and the
    patch that needs it. ``demo``: the page to look at (a small one of its own otherwise)."""
    if not gr.__version__.startswith(WRITTEN_FOR):
        raise RuntimeError(
            f"mmdemo's Gradio patches ({HERE}) were written for Gradio {WRITTEN_FOR}x; installed: {gr.__version__}."
            " Install the version in requirements.txt, or check each patch against it."
        )
    roots, made = _roots(demo if demo is not None else _probe()), {}
    problems = []
    for need in needs:
        value = _find(need.where, roots, made)
        if value is _MISSING:
            problems.append(f"{need.where} is missing: {HERE} {need.needed_by} needs it")
        elif not need.shape(value):
            problems.append(f"{need.where} is not {need.shape.text}: {HERE} {need.needed_by} needs it so")
    if problems:
        raise RuntimeError(f"Gradio {gr.__version__} is not what mmdemo's patches expect:\n- " + "\n- ".join(problems))


def patch_gradio() -> None:
    """Apply the patches that change Gradio for the whole process (each once)."""
    lazy_session_configs()
    race_free_image_cache()
    file_uploads_without_strays()


# --- the queue's analytics ---------------------------------------------------------------------

QUEUE_ANALYTICS = {
    "GRADIO_ANALYTICS_MAX_EVENTS": "200",  # events kept in the record
    "GRADIO_ANALYTICS_CACHE_FREQUENCY": "1000",  # events between two summaries
}


def bound_queue_analytics() -> None:
    """Gradio's queue (gradio/queueing.py, ``Queue.__init__``) keeps a record of its last
    GRADIO_ANALYTICS_MAX_EVENTS events (10,000 by default: memory that grows for hours under load)
    and recomputes their summary, a pandas group-by, after every GRADIO_ANALYTICS_CACHE_FREQUENCY-th
    one (every one by default: CPU on the path of each answer), for a monitoring dashboard this
    app does not open. Kept to the last 200 events, summarised every 1,000. The queue reads both
    when it is made (by every Blocks, and again by ``demo.queue()``), so this runs as mmdemo.ui is
    imported; a value set in the environment wins."""
    for name, value in QUEUE_ANALYTICS.items():
        os.environ.setdefault(name, value)


# --- the inputs of every event -----------------------------------------------------------------


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


class InputChecks:
    """The one replacement of a demo's ``Blocks.validate_inputs`` (gradio/blocks.py), through
    which every event's inputs pass before preprocessing (``Blocks.preprocess_data``):

    - Trailing inputs left out are filled. Gradio refuses a list shorter than the event's inputs
      ("didn't receive enough input values"), where gradio_client fills them in itself: a raw HTTP
      client (``/gradio_api/call/<name>``) written for ``/predict``'s five inputs (image, question,
      checkpoint, method, opacity) would fail once the owner token came last. A left-out value is
      its component's initial value (the default the page shows).
    - Numbers are checked in words. Gradio's Number and Slider preprocessing
      (gradio/components/number.py, ``raise_if_out_of_bounds`` and ``round_to_precision``) compares
      and rounds whatever a client sends: a string fails with a TypeError (a traceback in the log,
      no message for the caller), a number out of bounds gets "Value 0.9 is greater than maximum
      value 0.5." and a traceback. Here a number is refused naming the input as its caller knows
      it: an API endpoint's parameter as the API page names it, a page's field by its label (a
      BoundedSlider checks its own).
    - ``on_inputs`` (the cache sweeper's ``touch``) sees them: their files count as used now."""

    def __init__(self, demo: gr.Blocks):
        self.gradio_validate = demo.validate_inputs
        self.on_inputs: Callable[[list], None] | None = None

    def __call__(self, block_fn, inputs: list) -> None:
        if isinstance(inputs, list) and len(inputs) < len(block_fn.inputs):
            # preprocessing reads this same list next
            inputs.extend(getattr(block, "value", None) for block in block_fn.inputs[len(inputs) :])
        self.gradio_validate(block_fn, inputs)
        self.refuse_bad_numbers(block_fn, inputs)
        if self.on_inputs is not None:
            self.on_inputs(inputs)

    @staticmethod
    def refuse_bad_numbers(block_fn, inputs: list) -> None:
        names = None
        for i, block in enumerate(block_fn.inputs):
            if i >= len(inputs) or isinstance(block, BoundedSlider) or not isinstance(block, (gr.Number, gr.Slider)):
                continue
            if names is None:
                names = []
                if block_fn.api_visibility != "private" or not block.label:
                    try:
                        names = list(inspect.signature(block_fn.fn).parameters)
                    except (TypeError, ValueError):
                        pass
            name = names[i] if i < len(names) else str(block.label or f"input {i + 1}")
            problem = number_problem(name, inputs[i], block.minimum, block.maximum)
            if problem:
                raise input_error("number", problem)


def checked_inputs(demo: gr.Blocks) -> InputChecks:
    """The demo's ``InputChecks``, put in place the first time."""
    if not isinstance(demo.validate_inputs, InputChecks):
        demo.validate_inputs = InputChecks(demo)
    return demo.validate_inputs


# --- Gradio's file cache -----------------------------------------------------------------------


class GradioFiles:
    """What Gradio holds of its file cache for one demo, read safely while requests change it.

    Replaces Gradio's own sweep, which is turned off (``without_gradio_cache_sweep``). That sweep
    (gradio/route_utils.py, ``delete_files_created_by_app``, run in a thread every ``delete_cache``
    seconds by ``delete_files_on_schedule``) iterates each live set of ``Blocks.temp_file_sets``
    while requests add to them: the first pass that meets a request in progress raises "Set
    changed size during iteration", the loop ends with it, unlogged, and nothing is deleted
    again: the cache grows without end under a steady load. Here each set is copied in one C call
    before it is read (no request changes it half-way), and deleted paths are dropped from the
    sets (which nothing else shrinks: they would grow in memory too). ``ui.cache.CacheSweeper``
    decides what goes."""

    def __init__(self, demo: gr.Blocks):
        from gradio.utils import get_upload_folder

        self.demo = demo
        self.folder = Path(get_upload_folder())

    def running(self) -> bool:
        return self.demo.is_running

    def tracked(self) -> set[str]:
        """Every file Gradio put in the cache for this demo (uploads, outputs, example copies)."""
        files: set[str] = set()
        for file_set in list(self.demo.temp_file_sets):
            files.update(file_set.copy())
        return files

    def forget(self, paths: set[str]) -> None:
        for file_set in list(self.demo.temp_file_sets):
            file_set.difference_update(paths)  # one C call

    def uploads(self) -> set[str]:
        return {os.path.abspath(p) for p in self.demo.upload_file_set.copy()}

    def kept(self) -> set[str]:
        """The shipped examples' copies (a component's ``keep_in_cache``)."""
        files: set[str] = set()
        for block in list(self.demo.blocks.values()):
            files.update(os.path.abspath(p) for p in list(block.keep_in_cache))
        return files

    def queued_inputs(self) -> list:
        """The input data of every event waiting in Gradio's queue or running."""
        events = self.demo._queue.event_ids_to_events
        return [event.data.data for event in list(events.values()) if event.data is not None]

    def session_inputs(self) -> list:
        """What live sessions hold of the page: each input's last value (``SessionState``'s config
        entries; of a ``LazyConfigs``, only those made)."""
        values = []
        for session in list(self.demo.state_holder.session_data.values()):
            configs = session.config_values
            values.extend(configs.made() if isinstance(configs, LazyConfigs) else list(configs.values()))
        return values


def without_gradio_cache_sweep(demo: gr.Blocks) -> GradioFiles:
    """Turn Gradio's sweep off (``GradioFiles`` says why) and return the view that replaces it."""
    demo.delete_cache = None
    return GradioFiles(demo)


def race_free_image_cache() -> None:
    """Gradio's ``save_pil_to_cache`` (gradio/processing_utils.py) saves each output picture under
    the hash of its bytes by rewriting the file in place, even when it is there already: two
    requests with the same answer picture (two visitors asking the same question of the same
    scene) write the same file while the first one's browser reads it, which then gets a
    truncated picture ("peer closed connection without sending complete message body"). Here a
    picture already in the cache is only marked used (what ``CacheSweeper`` goes by); a new one is
    written under a temporary name and renamed into place, so a reader sees all of it or none."""
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


def file_uploads_without_strays() -> None:
    """Gradio's ``File._process_single_file`` (gradio/components/file.py) makes a
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


# --- sessions ----------------------------------------------------------------------------------


class LazyConfigs(dict):
    """A session's copy of the page's config (Gradio's ``SessionState.config_values``), made per
    block when first needed instead of for every block when the session starts.

    ``SessionState.__init__`` (gradio/state_holder.py) builds a config for each of the page's
    blocks (hundreds here, each through ``inspect.signature``) for every new session, on the
    server's event loop; a REST call (``/gradio_api/call/predict``) is a new session each time,
    so every such call, and every request waiting behind it, paid for it. What Gradio reads a
    session's config for: the inputs and outputs of its events (their entries are made as they
    are updated, as before) and deep links (every entry: ``items()``/``values()`` make the rest).
    """

    def __init__(self, blocks_config, ids):
        super().__init__()
        self._blocks_config, self._ids = blocks_config, list(ids)

    def made(self) -> list:
        """The entries made so far, making none (what ``GradioFiles.session_inputs`` walks)."""
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


SESSION_SWEEP_S = 30


async def forget_finished_sessions(demo: gr.Blocks) -> None:
    """Gradio's queue keeps, for every session that ever sent an event, a set of its pending
    event ids (``Queue.pending_event_ids_session``, gradio/queueing.py) and a message queue
    (``pending_messages_per_session``, up to 2,000 of them). When a session's events are answered,
    the stream that delivers them (gradio/routes.py, ``queue_data_helper``) empties its set but
    removes neither: one entry per visitor, forever. Drop both for a session whose set has stayed
    empty for a whole pass (its events answered, its stream closed). Runs in the server's event
    loop, where Gradio reads them, so no request sees them change half-way."""
    empty_before: set[str] = set()
    while True:
        await asyncio.sleep(SESSION_SWEEP_S)
        queue = demo._queue  # demo.queue() makes a new one: read it on each pass
        pending, messages = queue.pending_event_ids_session, queue.pending_messages_per_session
        empty = {session for session, ids in pending.items() if not ids}
        for session in empty & empty_before:
            del pending[session]
            messages.pop(session, None)
        empty_before = empty - empty_before


def on_queue_join(demo: gr.Blocks, callback: Callable[[list | None], None]) -> None:
    """Call ``callback`` with a request's input data when it asks to join the queue, admitted or
    refused as "queue full": Gradio has no hook there, so the running queue's ``push``
    (gradio/queueing.py) is wrapped. Call it once the server has started (its queue is final)."""
    queue = demo._queue
    push = queue.push

    async def push_and_tell(body, *args, **kwargs):
        callback(body.data)
        return await push(body, *args, **kwargs)

    queue.push = push_and_tell


# --- values handed to Gradio without its own processing ------------------------------------------


def plot_value(plotly_json: str):
    """A gr.Plot value made directly from a Plotly figure's JSON (render.plotly_json): Gradio's
    Plot.postprocess would first build a ``go.Figure`` and serialise it again on every answer.
    ``PlotData`` (gradio/components/plot.py) is what that postprocess returns, and a handler may
    return it as it is."""
    from gradio.components.plot import PlotData

    return PlotData(type="plotly", plot=plotly_json)


def inline_image_to_cache(component: gr.components.Component, url: str) -> str:
    """An image sent inline (a ``data:`` URL, as gradio_client and the page's paste send it) saved
    as its bytes to Gradio's cache, undecoded, and its path returned; the file is registered in
    the component's ``temp_files`` so that the cache sweep (ui/cache.py) deletes it in time.
    gr.Image.preprocess (gradio/components/image.py) would open it with PIL first, before any
    size check of ours; these two helpers of gradio/processing_utils.py are the steps it takes."""
    import base64

    from gradio import processing_utils

    data = base64.b64decode(processing_utils.extract_base64_data(url))
    path = processing_utils.save_bytes_to_cache(data, "image", cache_dir=component.GRADIO_CACHE)
    component.temp_files.add(path)
    return path


def outputs_postprocessor(demo: gr.Blocks, block_fn) -> Callable:
    """``await post(outputs)``: Gradio's own postprocessing of one event's outputs (each
    component's postprocess, pictures written to its cache), as a request gets it, for one
    visitor's session: what ``python -m mmdemo bench-app --stages`` times after the handler.
    ``Blocks.postprocess_data`` (gradio/blocks.py) is the step the queue runs; it has no public
    counterpart."""
    from gradio.state_holder import SessionState

    state = SessionState(demo)

    async def post(outputs: list) -> list:
        return await demo.postprocess_data(block_fn, outputs, state)

    return post
