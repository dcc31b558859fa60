"""The shared-server battery against a live server (the app as ``ui.launch.launch`` starts it,
tiny model): what an attacker or a careless visitor sends gets a specific refusal, visitors are
isolated, the shipped checkpoint's files never change, and the server keeps answering.
Timed figures (burst, soak, a 50 MB question) come from ``python -m mmdemo stress``."""

import concurrent.futures as cf
import csv
import importlib
import io
import os
import shutil
import socket
import threading
import time

import httpx
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402

from mmdemo import ui  # noqa: E402
from mmdemo.app.registry import CheckpointRegistry  # noqa: E402
from mmdemo.app.settings import Limits  # noqa: E402
from mmdemo.benchmarks.stress import folder_hash  # noqa: E402
from mmdemo.model.checkpoint import save_checkpoint  # noqa: E402
from mmdemo.model.classifier import build_model  # noqa: E402
from mmdemo.ui.launch import launch  # noqa: E402

from ..conftest import tiny_config  # noqa: E402

LABELS = ["red", "blue"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("battery")
    shipped = save_checkpoint(build_model(tiny_config(labels=LABELS)), root / "shipped" / "sort-of-clevr")
    # one /predict at a time, so a burst overflows the 4-place queue whatever the machine's speed
    limits = Limits(max_upload_mb=1, max_checkpoints=3, predict_concurrency=1)
    app = ui.App(
        CheckpointRegistry(root / "mine", root / "shipped", limits=limits), str(root / "work"), str(root / "jobs")
    )
    demo = ui.create_demo(app)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch(demo, app, "127.0.0.1", port, queue_size=4, prevent_thread_lock=True, quiet=True)
    hash_before = folder_hash(shipped)
    yield demo.local_url.rstrip("/"), app, root
    demo.close()
    app.close()
    assert folder_hash(shipped) == hash_before  # after every case of the battery


def _png(size=(24, 24), colour=(255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def _dataset(folder):
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(10):
        (folder / "img" / f"{i}.png").write_bytes(_png(colour=(255, 0, 0) if i % 2 else (0, 0, 255)))
        rows.append([f"img/{i}.png", "which colour is it?", "red" if i % 2 else "blue"])
    with open(folder / "data.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "text", "label"], *rows])
    return folder / "data.csv", shutil.make_archive(str(folder / "images"), "zip", root_dir=folder, base_dir="img")


def _start(client, data, name, overwrite=False, epochs=1, token=None):
    csv_path, archive = data
    args = [handle_file(str(csv_path)), handle_file(archive), "image", "text", "label", "sort-of-clevr"]
    args += [epochs, 3e-3, 4, [], 0.2, name, overwrite]
    return client.predict(*args, *([False, token] if token else []), api_name="/start_finetune")  # class_weights, token


def test_file_route_traversal_and_cors_are_refused(server):
    url, _, _ = server
    for path in ("/etc/passwd", "../../../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd"):
        r = httpx.get(f"{url}/gradio_api/file={path}")
        assert r.status_code in (403, 404) and "root:" not in r.text
    r = httpx.get(f"{url}/gradio_api/info", headers={"Origin": "http://evil.example"})
    assert r.headers.get("access-control-allow-origin") not in ("*", "http://evil.example")


def test_oversized_upload_and_request_body_get_413(server):
    url, _, _ = server
    r = httpx.post(f"{url}/gradio_api/upload", files={"files": ("big.png", b"\0" * 2_000_000, "image/png")})
    assert r.status_code == 413
    r = httpx.post(f"{url}/gradio_api/call/predict", json={"data": [None, "q" * 3_000_000]})
    assert r.status_code == 413 and "over the limit" in r.json()["error"]


def test_shipped_checkpoint_cannot_be_replaced_through_the_api(server, tmp_path):
    url, app, _ = server
    client = Client(url, verbose=False)
    data = _dataset(tmp_path / "d")
    with pytest.raises(Exception, match="'sort-of-clevr' is a shipped checkpoint and cannot be overwritten"):
        _start(client, data, "sort-of-clevr", overwrite=True)
    with pytest.raises(Exception, match="&lt;img src=x onerror=alert\\(1\\)&gt;"):  # shown as text, not HTML
        _start(client, data, "<img src=x onerror=alert(1)>")
    assert app.registry.names() == ["sort-of-clevr"]


def _answered_as_in_python(app, label: dict, path, text: str) -> None:
    """The served answer and its confidences are those Python's Predictor gives for that file."""
    alone = app.registry.predictor("sort-of-clevr").predict(path, text)
    assert label["label"] == alone.label and label["confidences"], label
    for c in label["confidences"]:
        assert c["confidence"] == pytest.approx(alone.scores[c["label"]], abs=1e-4)


def test_bad_images_get_specific_messages_and_the_server_keeps_serving(server, tmp_path):
    url, app, _ = server
    client = Client(url, verbose=False)
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, "PNG")  # 18 kB, 144 Mpx
    cases = {
        "empty.png": (b"", "the image: the file is empty"),
        "noise.png": (os.urandom(3000), "the image: not an image in a supported format"),
        "bomb.png": (bomb.getvalue(), "12000x12000 = 144,000,000 pixels, over the limit"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(Exception, match=message) as e:
            client.predict(handle_file(str(tmp_path / name)), "which colour?", api_name="/predict")
        assert str(tmp_path) not in str(e.value) and "/tmp" not in str(e.value)
    with pytest.raises(Exception, match="the most is 2,000"):
        client.predict(handle_file(str(tmp_path / "noise.png")), "x" * 5000, api_name="/predict")
    (tmp_path / "ok.png").write_bytes(_png())
    label = client.predict(handle_file(str(tmp_path / "ok.png")), "which colour?", api_name="/predict")[0]
    _answered_as_in_python(app, label, tmp_path / "ok.png", "which colour?")


def test_transparent_image_is_decoded_by_the_app_not_by_gradio(server, tmp_path):
    """An RGBA upload reaches the handler as the original file (Gradio would convert it)."""
    url, app, _ = server
    Image.new("RGBA", (24, 24), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    from gradio.data_classes import ImageData

    component = importlib.import_module("mmdemo.ui.predict").ImagePath(type="filepath")

    path = component.preprocess(ImageData(path=str(tmp_path / "clear.png"), orig_name="clear.png"))
    assert path == str(tmp_path / "clear.png") and Image.open(path).mode == "RGBA"
    client = Client(url, verbose=False)
    label = client.predict(handle_file(str(tmp_path / "clear.png")), "which colour?", api_name="/predict")[0]
    _answered_as_in_python(app, label, tmp_path / "clear.png", "which colour?")  # the file as uploaded


def test_visitors_are_isolated_and_a_token_keeps_control(server, tmp_path):
    url, app, _ = server
    alice, bob = Client(url, verbose=False), Client(url, verbose=False)
    data = _dataset(tmp_path / "d")
    status = _start(alice, data, "alice-model", epochs=30)
    token = status["owner_token"]
    assert status["state"] in ("queued", "preparing", "running")
    assert bob.predict(api_name="/finetune_status")["state"] == "idle"  # bob sees nothing of it
    with pytest.raises(Exception, match="no owner token"):
        bob.predict(api_name="/stop_finetune")
    # alice's own client without her token is nobody either: a session holds no identity
    assert alice.predict(api_name="/finetune_status")["state"] == "idle"
    # ... and bob replaying alice's session hash reads and stops nothing of hers
    replay = Client(url, verbose=False)
    replay.session_hash = alice.session_hash
    assert replay.predict(api_name="/finetune_status")["state"] == "idle"
    with pytest.raises(Exception, match="no owner token"):
        replay.predict(api_name="/stop_finetune")
    bob_token = _start(bob, data, "bob-model", epochs=1)["owner_token"]
    replay.session_hash = alice.session_hash
    assert replay.predict(bob_token, api_name="/stop_finetune")["checkpoint"] == "bob-model"  # stops only his own
    assert alice.predict(token, api_name="/finetune_status")["state"] in ("preparing", "running")
    # a new client with alice's token controls her job: stop mid-epoch
    deadline = time.time() + 120
    while alice.predict(token, api_name="/finetune_status")["state"] != "running" and time.time() < deadline:
        time.sleep(0.3)
    stopped = Client(url, verbose=False).predict(token, api_name="/stop_finetune")
    assert stopped["checkpoint"] == "alice-model"
    while (
        alice.predict(token, api_name="/finetune_status")["state"] in ("preparing", "running")
        and time.time() < deadline
    ):
        time.sleep(0.3)
    assert alice.predict(token, api_name="/finetune_status")["state"] == "stopped"
    owner = app.owner(token)
    folders = [r["data"]["folder"] for r in app.jobs.records() if r["owner"] == owner]
    kept = alice.predict(token, api_name="/finetune_status")["resumable"]  # stopped after an epoch: kept for Resume
    assert folders and all(os.path.exists(f) == kept for f in folders)  # else its upload folder went with it
    if "alice-model" in app.registry.names(owner):  # stopped after its first epoch: saved, hers only
        with pytest.raises(Exception, match="unknown checkpoint 'alice-model'"):
            bob.predict(handle_file(str(data[0].parent / "img" / "1.png")), "q", "alice-model", api_name="/predict")
        with pytest.raises(Exception, match="you have no checkpoint named 'alice-model'"):
            bob.predict("alice-model", bob_token, api_name="/delete_checkpoint")
        assert "alice-model" not in alice.predict("alice-model", token, api_name="/delete_checkpoint")


def test_queue_overflow_is_refused_as_queue_full_and_nothing_fails(server, tmp_path):
    url, _, _ = server
    # a large (but small-file) image: decoding it makes each answer slower than admitting a call
    big = _png(size=(2000, 2000))
    upload = httpx.post(f"{url}/gradio_api/upload", files={"files": ("ok.png", big, "image/png")}).json()[0]
    payload = {
        "data": [{"path": upload, "meta": {"_type": "gradio.FileData"}}, "which colour?", None, "gradient", 0.5, None]
    }

    at_once = threading.Barrier(100)  # every call posted together: 100 against 8 running + 4 waiting

    def call(_):
        with httpx.Client(timeout=120) as client:
            at_once.wait(timeout=60)
            r = client.post(f"{url}/gradio_api/call/predict", json=payload)
            if r.status_code == 503:
                return "queue full" if "Queue is full" in r.text else r.text
            text = client.get(f"{url}/gradio_api/call/predict/{r.json()['event_id']}").text
            return "answered" if "event: complete" in text else text

    with cf.ThreadPoolExecutor(100) as pool:
        outcomes = list(pool.map(call, range(100)))
    assert set(outcomes) <= {"answered", "queue full"}, outcomes
    assert "queue full" in outcomes and "answered" in outcomes, {o: outcomes.count(o) for o in set(outcomes)}
