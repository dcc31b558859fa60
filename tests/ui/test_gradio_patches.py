"""What ``ui.serve`` changes in Gradio's internals for speed and safety: a new session makes its
copy of the page's config per block when needed (not all of it on every REST call), and an
output picture already in the cache is never rewritten under a reader."""

import os
import threading
import time

import pytest
from PIL import Image

gr = pytest.importorskip("gradio")

from gradio import processing_utils  # noqa: E402
from gradio.state_holder import SessionState  # noqa: E402

from mmdemo.ui import serve  # noqa: E402


def _page():
    with gr.Blocks() as demo:
        question = gr.Textbox(value="What shape?", label="Question")
        picture = gr.Image(label="Picture")
        gr.Button("Predict")
    return demo, question, picture


def test_a_new_session_makes_its_configs_when_needed_and_deep_links_get_all_of_them():
    demo, question, picture = _page()
    config = demo.default_config
    everything = {k: config.config_for_block(k, [], v) for k, v in config.blocks.items() if k in demo.blocks}
    serve.lazy_session_configs()

    state = SessionState(demo)
    assert isinstance(state.config_values, serve.LazyConfigs)
    assert state.config_values.made() == []  # nothing made when the session starts

    state._update_value_in_config(question._id, "Is it red?")  # what an event's input does
    made = state.config_values.made()
    assert len(made) == 1 and made[0]["props"]["value"] == "Is it red?"

    components = {c["id"]: c for c in state.components}  # what a deep link reads: every block
    assert set(components) == {c["id"] for c in everything.values() if c}
    assert components[question._id]["props"]["value"] == "Is it red?"
    assert components[picture._id] == everything[picture._id]


def test_a_picture_already_cached_is_marked_used_not_rewritten(tmp_path):
    serve.race_free_image_cache()
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
    serve.race_free_image_cache()
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

    serve.file_uploads_without_strays()
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

    serve.file_uploads_without_strays()
    upload = tmp_path / name
    upload.write_bytes(b"\x1f\x8b")
    with pytest.raises(gr.Error) as refused:
        gr.File(type="filepath", file_types=[".csv"]).preprocess(FileData(path=str(upload), orig_name=name))
    assert refused.value.message == message
    assert refused.value.print_exception is False  # one log line, not a traceback
    assert [r.getMessage() for r in caplog.records] == [f"upload: rejected input: {message}"]


def test_the_patches_refuse_a_gradio_they_were_not_written_for(monkeypatch):
    serve.check_patched_gradio()  # the installed one
    monkeypatch.setattr(gr, "__version__", "7.0.0")
    with pytest.raises(RuntimeError, match="written for Gradio 6.31.x; installed: 7.0.0"):
        serve.check_patched_gradio()
