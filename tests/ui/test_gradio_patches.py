"""What ``ui.gradio_patches`` changes in Gradio's internals, and its start-up check: the check
passes on the installed Gradio and names anything a patch needs that is missing or reshaped; a
new session makes its copy of the page's config per block when needed (not all of it on every
REST call); an output picture already in the cache is never rewritten under a reader; a file
handed to a handler leaves no stray temporary; every event's inputs are completed and their
numbers checked in words; the queue's analytics record stays small."""

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

gr = pytest.importorskip("gradio")

from gradio import processing_utils, queueing  # noqa: E402
from gradio.state_holder import SessionState  # noqa: E402

from mmdemo.ui import gradio_patches  # noqa: E402


def _page():
    with gr.Blocks() as demo:
        question = gr.Textbox(value="What shape?", label="Question")
        picture = gr.Image(label="Picture")
        gr.Button("Predict")
    return demo, question, picture


# --- the start-up check ------------------------------------------------------------------------


def test_the_check_passes_on_the_installed_gradio():
    gradio_patches.check()  # on a page of its own
    gradio_patches.check(_scale_page()[0])


def test_the_patches_refuse_a_gradio_they_were_not_written_for(monkeypatch):
    monkeypatch.setattr(gr, "__version__", "7.0.0")
    with pytest.raises(RuntimeError, match="written for Gradio 6.31.x; installed: 7.0.0"):
        gradio_patches.check()


def _delete(monkeypatch, owner, name: str) -> None:
    """Take ``name`` away from ``owner``: from the object itself, or from the class it has it from."""
    if name in vars(owner):
        monkeypatch.delattr(owner, name)
        return
    classes = owner.__mro__ if isinstance(owner, type) else type(owner).__mro__
    monkeypatch.delattr(next(c for c in classes if name in vars(c)), name)


def _take_away(monkeypatch, demo, where: str) -> None:
    """Make ``where`` (a ``Private.where``) missing for the next check of ``demo``."""
    import importlib

    head, *names = where.split(".")
    *path, last = names
    made_by_the_check = {"SessionState()": SessionState, "Event()": queueing.Event, "Image()": gr.Image}
    if head in made_by_the_check:  # made inside the check: take it away as each one is made
        cls = made_by_the_check[head]
        start = cls.__init__

        def start_without(self, *args, **kwargs):
            start(self, *args, **kwargs)
            owner = self
            for name in path:
                owner = getattr(owner, name)
            _delete(monkeypatch, owner, last)

        monkeypatch.setattr(cls, "__init__", start_without)
        return
    if head == "Blocks()":
        owner = demo
    elif head == "BlockFunction()":
        owner = next(iter(demo.fns.values()))
    else:
        for cut in range(len(path), -1, -1):
            try:
                owner = importlib.import_module(".".join([head, *path[:cut]]))
            except ImportError:
                continue
            path = path[cut:]
            break
    for name in path:
        owner = getattr(owner, name)
    _delete(monkeypatch, owner, last)


@pytest.mark.parametrize("need", gradio_patches.NEEDS, ids=lambda need: need.where)
def test_the_check_names_whatever_a_patch_needs_that_is_missing(monkeypatch, need):
    demo = gradio_patches._probe()
    _take_away(monkeypatch, demo, need.where)
    with pytest.raises(RuntimeError) as refused:
        gradio_patches.check(demo)
    message = str(refused.value)
    assert f"{need.where} is " in message, message  # "is missing" or "is not <its shape>"
    assert f"mmdemo/ui/gradio_patches.py {need.needed_by} needs it" in message, message


def test_the_check_names_a_function_whose_parameters_changed(monkeypatch):
    from gradio.components.file import File

    monkeypatch.setattr(File, "_process_single_file", lambda self, data, extra: None)
    with pytest.raises(RuntimeError) as refused:
        gradio_patches.check()
    assert str(refused.value).endswith(
        "- gradio.components.file.File._process_single_file is not a function (self, f):"
        " mmdemo/ui/gradio_patches.py file_uploads_without_strays needs it so"
    )


# --- the patches -------------------------------------------------------------------------------


def test_a_new_session_makes_its_configs_when_needed_and_deep_links_get_all_of_them():
    demo, question, picture = _page()
    config = demo.default_config
    everything = {k: config.config_for_block(k, [], v) for k, v in config.blocks.items() if k in demo.blocks}
    gradio_patches.lazy_session_configs()

    state = SessionState(demo)
    assert isinstance(state.config_values, gradio_patches.LazyConfigs)
    assert state.config_values.made() == []  # nothing made when the session starts

    state._update_value_in_config(question._id, "Is it red?")  # what an event's input does
    made = state.config_values.made()
    assert len(made) == 1 and made[0]["props"]["value"] == "Is it red?"

    components = {c["id"]: c for c in state.components}  # what a deep link reads: every block
    assert set(components) == {c["id"] for c in everything.values() if c}
    assert components[question._id]["props"]["value"] == "Is it red?"
    assert components[picture._id] == everything[picture._id]


def test_a_picture_already_cached_is_marked_used_not_rewritten(tmp_path):
    gradio_patches.race_free_image_cache()
    picture = Image.new("RGB", (64, 48), (200, 30, 30))
    first = processing_utils.save_pil_to_cache(picture, str(tmp_path), format="png")
    os.utime(first, (1, 1))
    inode = os.stat(first).st_ino
    again = processing_utils.save_pil_to_cache(picture, str(tmp_path), format="png")
    assert again == first
    assert os.stat(first).st_ino == inode  # the same file, not a new one
    assert os.stat(first).st_mtime > time.time() - 60  # used now (what the cache sweep goes by)
    assert Image.open(first).size == (64, 48)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["image.png"]  # no temporary left


def test_readers_never_see_a_picture_half_written(tmp_path):
    """Writers save the same picture again and again (identical answers to identical requests)
    while readers read it whole: every read has all of its bytes."""
    gradio_patches.race_free_image_cache()
    picture = Image.effect_noise((400, 400), 60).convert("RGB")  # a big PNG: a long write
    path = processing_utils.save_pil_to_cache(picture, str(tmp_path), format="png")
    size = os.path.getsize(path)
    os.remove(path)  # every writer below finds it missing at first
    short: list[int] = []
    stop = threading.Event()

    def write():
        for _ in range(15):
            processing_utils.save_pil_to_cache(picture, str(tmp_path), format="png")
            try:
                os.remove(path)  # gone again: the next save writes it anew
            except FileNotFoundError:
                pass

    def read():
        while not stop.is_set():
            try:
                with open(path, "rb") as f:
                    n = len(f.read())
            except FileNotFoundError:
                continue
            if n != size:
                short.append(n)

    readers = [threading.Thread(target=read) for _ in range(2)]
    writers = [threading.Thread(target=write) for _ in range(3)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert short == []


def test_a_file_handed_to_a_handler_leaves_nothing_at_the_cache_root(tmp_path):
    """Gradio 6.31's File made an empty NamedTemporaryFile in the cache for every file it handed
    over, and never deleted it."""
    from gradio.data_classes import FileData

    gradio_patches.file_uploads_without_strays()
    upload = tmp_path / "0123abcd" / "data.csv"
    upload.parent.mkdir()
    upload.write_text("image,text,label\n")
    for component in (gr.File(type="filepath", file_types=[".csv"]), gr.File(type="filepath")):
        component.GRADIO_CACHE = str(tmp_path)
        assert component.preprocess(FileData(path=str(upload), orig_name="data.csv")) == str(upload)
    assert [p.name for p in tmp_path.iterdir()] == ["0123abcd"]  # no tmp* beside the upload's folder


@pytest.mark.parametrize(
    "name, message",
    [
        ("data.csv.gz", "'data.csv.gz' is compressed (.gz): upload the .csv itself, uncompressed"),
        ("data.CSV.zip", "'data.CSV.zip' is compressed (.zip): upload the .csv itself, uncompressed"),
        ("notes.txt", "'notes.txt' is not a .csv file: upload a .csv"),
    ],
)
def test_a_file_of_another_type_is_refused_in_the_visitors_words(tmp_path, name, message, caplog):
    from gradio.data_classes import FileData

    gradio_patches.file_uploads_without_strays()
    upload = tmp_path / name
    upload.write_bytes(b"\x1f\x8b")
    with pytest.raises(gr.Error) as refused:
        gr.File(type="filepath", file_types=[".csv"]).preprocess(FileData(path=str(upload), orig_name=name))
    assert refused.value.message == message
    assert refused.value.print_exception is False  # one log line, not a traceback
    assert [r.getMessage() for r in caplog.records] == [f"upload: rejected input: {message}"]


def _scale_page():
    def scale(question: str, strength: float = 0.5, owner_token: str | None = None):
        return question

    with gr.Blocks() as demo:
        question = gr.Textbox()
        strength = gr.Number(0.5, minimum=0, maximum=1, label="Strength")
        token = gr.Textbox("token-default")
        gr.Button().click(scale, [question, strength, token], question, api_name="scale")
    gradio_patches.checked_inputs(demo)
    return demo, next(iter(demo.fns.values()))


def test_left_out_trailing_inputs_take_their_components_initial_values():
    demo, scale = _scale_page()
    seen = []
    gradio_patches.checked_inputs(demo).on_inputs = seen.append
    inputs = ["What shape?"]  # a raw HTTP caller that sent the question alone
    processed = asyncio.run(demo.preprocess_data(scale, inputs, None))
    assert processed == ["What shape?", 0.5, "token-default"]
    assert seen == [["What shape?", 0.5, "token-default"]]  # the cache sweeper's touch sees them


@pytest.mark.parametrize(
    "value, message",
    [("abc", "strength must be a number, got 'abc'"), (1.5, "strength must be at most 1, got 1.5")],
)
def test_a_bad_number_is_refused_naming_the_parameter(value, message):
    demo, scale = _scale_page()
    with pytest.raises(gr.Error) as refused:
        asyncio.run(demo.preprocess_data(scale, ["What shape?", value], None))
    assert refused.value.message == message
    assert gradio_patches.checked_inputs(demo) is demo.validate_inputs  # put in place once


def test_the_queue_keeps_a_small_analytics_record(monkeypatch):
    for name in gradio_patches.QUEUE_ANALYTICS:
        monkeypatch.delenv(name, raising=False)
    gradio_patches.bound_queue_analytics()
    queue = gr.Blocks()._queue
    assert (queue.ANALYTICS_MAX_EVENTS, queue.ANAYLTICS_CACHE_FREQUENCY) == (200, 1000)


def test_an_inline_image_is_saved_to_the_cache_as_sent_and_left_to_the_sweep():
    import base64

    png = (
        Path(__file__).resolve().parents[2] / "checkpoints" / "sort-of-clevr" / "examples" / "scene_4.png"
    ).read_bytes()
    image = gr.Image()
    path = gradio_patches.inline_image_to_cache(image, "data:image/png;base64," + base64.b64encode(png).decode())
    assert Path(path).read_bytes() == png  # undecoded: our own decoder checks its size first
    assert path in image.temp_files
