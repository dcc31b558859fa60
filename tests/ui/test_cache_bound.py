"""Gradio's file cache and per-session records stay bounded against a live server (the app as
``ui.launch.launch`` starts it, tiny model, a 0.5 MB cache cap): under concurrent load the
cache stays under its cap, a file a queued request needs is kept, a swept upload gets a
clear message, and finished sessions are forgotten."""

import concurrent.futures as cf
import io
import os
import socket
import time

import httpx
import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")

from mmdemo import ui  # noqa: E402
from mmdemo.app.registry import CheckpointRegistry  # noqa: E402
from mmdemo.app.settings import Limits  # noqa: E402
from mmdemo.benchmarks.stress import _disk_mb  # noqa: E402
from mmdemo.model.checkpoint import save_checkpoint  # noqa: E402
from mmdemo.model.classifier import build_model  # noqa: E402
from mmdemo.ui import cache as ui_cache  # noqa: E402
from mmdemo.ui import gradio_patches, launch  # noqa: E402

from ..conftest import tiny_config  # noqa: E402

CAP_MB = 0.5
SWEEP_S = 0.5  # the sweeper's period here (ui/cache.py CACHE_SWEEP_S): the tests wait for two sweeps


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    save_checkpoint(build_model(tiny_config(labels=["red", "blue"])), root / "shipped" / "sort-of-clevr")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(root / "gradio"))  # a cache of its own, measured whole
        mp.setenv("MMDEMO_CACHE_MAX_MB", str(CAP_MB))
        mp.setenv("MMDEMO_CACHE_MIN_AGE_S", "1")
        mp.setattr(gradio_patches, "SESSION_SWEEP_S", 1)
        mp.setattr(ui_cache, "CACHE_SWEEP_S", SWEEP_S)
        mp.setattr(launch, "SESSION_CAPACITY", 2)  # what live pages hold is kept: few pages here
        limits = Limits(predict_concurrency=1)
        app = ui.App(CheckpointRegistry(root / "mine", root / "shipped", limits=limits), str(root / "work"))
        demo = ui.create_demo(app)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launch.launch(demo, app, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
        yield demo.local_url.rstrip("/"), demo, root / "gradio"
        demo.close()
        app.close()


_rng = np.random.default_rng(0)


def _png(size: int = 64) -> bytes:
    """A distinct noisy image (uploads of the same bytes would share one cached file)."""
    buf = io.BytesIO()
    Image.fromarray(_rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _upload(client: httpx.Client, url: str, data: bytes) -> str:
    r = client.post(f"{url}/gradio_api/upload", files={"files": ("scene.png", data, "image/png")})
    r.raise_for_status()
    return r.json()[0]


def _call(client: httpx.Client, url: str, path: str) -> str:
    payload = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, "which colour?"]}
    r = client.post(f"{url}/gradio_api/call/predict", json=payload)
    r.raise_for_status()
    return r.json()["event_id"]


def _result(client: httpx.Client, url: str, event_id: str) -> str:
    text = client.get(f"{url}/gradio_api/call/predict/{event_id}").text
    return "answered" if "event: complete" in text else text


def _predict(url: str, data: bytes) -> tuple[str, str]:
    with httpx.Client(timeout=120) as client:
        path = _upload(client, url, data)
        return path, _result(client, url, _call(client, url, path))


def test_the_cache_stays_under_its_cap_under_concurrent_load(server):
    url, demo, cache = server
    with cf.ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda _: _predict(url, _png()), range(40)))
    assert all(outcome == "answered" for _, outcome in done), {o for _, o in done}
    # 40 uploads and their output images are well over the cap (each answer writes 4 images)
    time.sleep(2 * SWEEP_S + 1.5)  # older than MMDEMO_CACHE_MIN_AGE_S, swept
    assert _disk_mb([cache]) <= CAP_MB, sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert not os.path.exists(done[0][0])  # the first upload went (least recently used)
    tracked = set().union(*demo.temp_file_sets)  # Gradio's own records of cached files shrink too
    assert len(tracked) == sum(1 for p in cache.rglob("*") if p.is_file())


def test_a_file_a_queued_request_needs_is_kept_and_a_swept_one_is_named(server):
    url, demo, cache = server
    big = io.BytesIO()
    Image.new("RGB", (2000, 2000), (200, 30, 30)).save(big, "PNG")  # small file, slow to decode
    with httpx.Client(timeout=120) as client:
        old = _upload(client, url, _png())
        gone = _upload(client, url, _png())
        # one /predict at a time: the last call waits in the queue behind slow ones
        slow = [_call(client, url, _upload(client, url, big.getvalue())) for _ in range(6)]
        waiting = _call(client, url, old)
        an_hour_ago = time.time() - 3600  # long past MMDEMO_CACHE_TTL_MIN, first to go over the cap
        os.utime(old, (an_hour_ago, an_hour_ago))
        os.utime(gone, (an_hour_ago, an_hour_ago))
        demo.cache_sweeper.sweep()
        assert os.path.exists(old) and not os.path.exists(gone)  # what a waiting request needs stays
        assert all(_result(client, url, e) == "answered" for e in slow)
        assert _result(client, url, waiting) == "answered"
        message = _result(client, url, _call(client, url, gone))
    assert "the image is no longer on the server" in message and "upload it again" in message


def test_an_upload_no_request_has_sent_yet_outlives_the_cap(server):
    """A visitor's upload (a training zip while they pick the columns) is kept over the cap
    until the TTL; the next request can use it."""
    url, demo, _ = server
    with httpx.Client(timeout=120) as client:
        path = _upload(client, url, _png(600))  # ~1 MB of noise, over the 0.5 MB cap by itself
        time.sleep(2 * SWEEP_S + 1.5)
        assert os.path.exists(path)
        assert _result(client, url, _call(client, url, path)) == "answered"


def test_finished_sessions_are_forgotten(server):
    url, demo, _ = server
    for _ in range(8):  # each call a new session
        assert _predict(url, _png(16))[1] == "answered"
    pending = demo._queue.pending_event_ids_session
    deadline = time.monotonic() + 10
    while len(pending) > 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(pending) <= 2, len(pending)  # Gradio 6.31 alone keeps one entry per session, forever
