"""The shared-server battery, without a server: shipped checkpoints stay untouched,
visitors are isolated, every bad input gets a specific message and nothing is left behind.
The live-server cases are in test_stress_battery.py; timed ones in ``python -m mmdemo stress``."""

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from mmdemo.app.backend import App
from mmdemo.app.registry import REPO_CHECKPOINTS, CheckpointRegistry, owner_id
from mmdemo.app.settings import Limits, checkpoint_dir
from mmdemo.app.uploads import UploadFolder, process_tag, sweep_uploads
from mmdemo.benchmarks.stress import folder_hash
from mmdemo.datasets.archives import extract_zip
from mmdemo.datasets.csv_table import read_csv
from mmdemo.model.checkpoint import load_checkpoint, read_config, save_checkpoint
from mmdemo.model.classifier import build_model
from mmdemo.model.encoders import load_tokenizer
from mmdemo.model.preprocess import tokenize

from ..conftest import tiny_config

A, B = owner_id("a" * 43), owner_id("b" * 43)


def _csv(folder: Path, rows, header=("image", "text", "label"), n_images=4) -> Path:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(folder / "img" / f"{i}.png")
    lines = [",".join(header)] + [",".join(r) for r in rows]
    (folder / "data.csv").write_text("\n".join(lines) + "\n")
    return folder / "data.csv"


@pytest.fixture
def app(tmp_path):
    shipped = tmp_path / "shipped"
    save_checkpoint(build_model(tiny_config(labels=["blue", "red"])), shipped / "sort-of-clevr")
    app = App(CheckpointRegistry(tmp_path / "mine", shipped), str(tmp_path / "work"), str(tmp_path / "jobs"))
    yield app
    app.close()


# --- 1. shipped checkpoints are read-only, the writable folder is outside the repository ---


def test_default_writable_folder_is_outside_the_repository(monkeypatch, tmp_path):
    monkeypatch.delenv("MMDEMO_CHECKPOINT_DIR", raising=False)
    monkeypatch.delenv("MMDEMO_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "user-data"))
    folder = checkpoint_dir()
    assert not folder.resolve().is_relative_to(REPO_CHECKPOINTS.parent)
    if not (os.path.isdir("/data") and os.access("/data", os.W_OK)):
        assert folder == tmp_path / "user-data" / "mmdemo" / "checkpoints"
    with pytest.raises(ValueError, match="outside the shipped checkpoints"):
        CheckpointRegistry(REPO_CHECKPOINTS)
    with pytest.raises(ValueError, match="outside the shipped checkpoints"):
        CheckpointRegistry(REPO_CHECKPOINTS / "mine")


def test_shipped_checkpoint_cannot_be_overwritten_or_deleted(app, tmp_path):
    shipped = app.registry.path("sort-of-clevr")
    before = folder_hash(shipped)
    data = _csv(tmp_path / "d", [(f"img/{i}.png", "q", "red" if i % 2 else "blue") for i in range(4)])
    for owner in (A, "shared"):
        with pytest.raises(ValueError, match="'sort-of-clevr' is a shipped checkpoint and cannot be overwritten"):
            app.start_job(
                owner, str(data), None, ("image", "text", "label"), _settings(), "sort-of-clevr", None, True, 0.25
            )
        with pytest.raises(ValueError, match="'sort-of-clevr' is a shipped checkpoint and cannot be deleted"):
            app.registry.delete("sort-of-clevr", owner)
    assert folder_hash(shipped) == before
    assert not list(Path(app.registry.writable_dir).rglob("sort-of-clevr"))


def _settings():

    return dict(epochs=1, batch_size=4, freeze=[])


# --- 2. visitors are isolated; ownership comes from a secret token ------------------------


def test_visitors_see_and_control_only_their_own_checkpoints(app, tmp_path):
    save_checkpoint(build_model(tiny_config(labels=["blue", "red"])), app.registry.target("mine", A))
    assert app.checkpoint_names(A) == ["sort-of-clevr", "mine"]
    assert app.checkpoint_names(B) == ["sort-of-clevr"] and app.checkpoint_names(None) == ["sort-of-clevr"]
    with pytest.raises(ValueError, match="you have no checkpoint named 'mine'"):
        app.registry.delete("mine", B)
    with pytest.raises(ValueError, match="unknown checkpoint 'mine'"):
        app.download("mine", B)
    assert Path(app.download("mine", A)).name == "mine.zip"
    # B may use the same name for their own, without touching A's
    save_checkpoint(build_model(tiny_config(labels=["x", "y"])), app.registry.target("mine", B))
    assert read_config(app.registry.path("mine", A)).labels == ["blue", "red"]
    app.registry.delete("mine", A)
    assert app.checkpoint_names(A) == ["sort-of-clevr"] and "mine" in app.checkpoint_names(B)


def test_owner_comes_from_a_secret_token_not_from_a_name(app):
    token = app.new_token()
    assert len(token) >= 43 and app.owner(token) == app.owner(token) != app.owner(app.new_token())
    # an owner id (what a folder is called) presented as a token is a different, empty owner
    assert app.owner(A.removeprefix("a-") + "x" * 11) not in (A, B)
    for bad in ("", "short", "../../etc", A + "/x"):
        with pytest.raises(ValueError):
            app.owner(bad)
    assert app.owner(None, hf_username="alice") == "hf-alice"
    shared = App(app.registry, str(app.work_dir), str(app.jobs.dir), shared=True)
    assert shared.owner(None) == shared.owner(token) == "shared"
    shared.jobs.close()


def test_quota_and_time_to_live_of_anonymous_checkpoints(tmp_path):
    shipped = tmp_path / "shipped"
    save_checkpoint(build_model(tiny_config()), shipped / "base")
    registry = CheckpointRegistry(tmp_path / "mine", shipped, limits=Limits(max_checkpoints=2, anonymous_ttl_hours=1))
    for name in ("one", "two"):
        save_checkpoint(build_model(tiny_config()), registry.target(name, A))
    with pytest.raises(ValueError, match="you have 2 checkpoints, the limit per visitor"):
        registry.target("three", A)
    registry.target("two", A, overwrite=True)  # replacing one is within the quota
    save_checkpoint(build_model(tiny_config()), registry.target("kept", "hf-alice"))
    assert registry.clean(now=time.time() + 2 * 3600) == [f"{A}/one", f"{A}/two"]
    assert registry.names(A) == ["base"] and registry.names("hf-alice") == ["base", "kept"]


def test_the_visitor_of_a_request_comes_from_its_token_in_shared_mode_too(app):
    token, other = app.new_token(), app.new_token()
    assert app.visitor(token) == app.owner(token) != app.visitor(other)
    with pytest.raises(ValueError, match="no owner token"):
        app.visitor(None)
    shared = App(app.registry, str(app.work_dir), str(app.jobs.dir), shared=True)
    # everyone shares the checkpoints, but each browser keeps its own evaluation and stop button
    assert shared.owner(token) == shared.owner(other) == "shared"
    assert shared.visitor(token) != shared.visitor(other) and shared.visitor(None) == "shared"
    shared.jobs.close()


def test_an_evaluation_is_stopped_only_with_its_visitors_token(app, tmp_path):
    import threading

    import gradio as gr

    from mmdemo.evaluation.ratings import RatingStore
    from mmdemo.ui.evaluate import Evaluation

    evaluation = Evaluation(app, RatingStore(tmp_path / "ratings"))
    alice, bob = app.new_token(), app.new_token()
    running = evaluation._stops[app.visitor(alice)] = threading.Event()  # alice's run, between two batches
    evaluation.stop(bob)  # "Nothing to stop." for bob
    evaluation.stop(None)  # a page without its token yet has started nothing: "Nothing to stop." too
    assert not running.is_set()
    evaluation.stop(alice)
    assert running.is_set()
    with pytest.raises(gr.Error, match="Run an evaluation first"):  # bob's look stores nothing
        evaluation.filter(False, "(all)", "(all)", "(all)", False, bob)
    assert len(evaluation.results) == 0


# --- 3. bounded work per request -----------------------------------------------------------


def test_huge_text_is_refused_before_any_work(app):
    with pytest.raises(ValueError, match="The question has 52,428,800 characters; the most is 2,000."):
        app.check_text("a" * 50 * 1024 * 1024)


def test_tokenizer_sees_a_bounded_prefix_of_a_long_text():
    tokenizer = load_tokenizer("minilm")
    batch = tokenize(tokenizer, ["what colour " * 500_000], 16)
    assert batch.truncated == [True] and batch.input_ids.shape == (1, 16)


def test_csv_limits_duplicates_and_missing_value_labels(tmp_path):
    rows = [
        ("img/0.png", "q", "red"),
        ("img/1.png", "q", "NaN"),
        ("img/2.png", "q", "None"),
        ("img/3.png", "q", "null"),
    ]
    dataset = read_csv(_csv(tmp_path / "a", rows))
    assert dataset.labels == ["red"]
    assert [r for r, _ in dataset.rejected] == [3, 4, 5]
    assert "label 'NaN' marks a missing value, not a class" in dataset.report()
    with pytest.raises(ValueError, match=r"the header names column\(s\) \['label'\] more than once"):
        read_csv(_csv(tmp_path / "b", [("img/0.png", "q", "a", "b")], header=("image", "text", "label", "label")))
    many = [(f"img/{i % 4}.png", "q", "red" if i % 2 else "blue") for i in range(30)]
    with pytest.raises(ValueError, match="more than 20 data rows"):
        read_csv(_csv(tmp_path / "c", many), max_rows=20)
    assert len(read_csv(_csv(tmp_path / "d", many)).examples) == 30  # the CLI is not capped


def test_check_data_refuses_one_class_and_removes_its_upload_folder(app, tmp_path):
    before = set(Path(app.work_dir).parent.glob("mmdemo-upload-*"))
    data = _csv(tmp_path / "one", [(f"img/{i}.png", "q", "red") for i in range(4)])
    images = shutil.make_archive(str(tmp_path / "images"), "zip", root_dir=tmp_path / "one", base_dir="img")
    with pytest.raises(ValueError, match="needs at least 2 classes, found 1"):
        app.preflight(str(data), images, ("image", "text", "label"))
    two = _csv(tmp_path / "two", [(f"img/{i}.png", "q", "red" if i % 2 else "blue") for i in range(4)])
    assert "4 rows accepted" in app.preflight(str(two), images, ("image", "text", "label"))
    assert set(Path(app.work_dir).parent.glob("mmdemo-upload-*")) == before


def test_web_csv_over_its_byte_cap_is_refused(tmp_path):
    app = App(
        CheckpointRegistry(tmp_path / "mine", tmp_path / "shipped", limits=Limits(max_csv_mb=1)),
        str(tmp_path / "work"),
        str(tmp_path / "jobs"),
    )
    (tmp_path / "big.csv").write_text("image,text,label\n" + "a.png,q,x\n" * 200_000)
    with pytest.raises(ValueError, match="the CSV is 2.0 MB, over the limit of 1 MB"):
        app.preflight(str(tmp_path / "big.csv"), None, ("image", "text", "label"))
    app.close()


# --- 6. zips: specific messages, nothing partly extracted ---------------------------------


def _zip_bytes(entries) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            z.writestr(name, data)
    return buf.getvalue()


def test_bad_zips_are_refused_by_name_and_leave_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.csv").write_text("kept")

    def refused(data: bytes, match: str):
        (tmp_path / "u.zip").write_bytes(data)
        with pytest.raises(ValueError, match=match):
            extract_zip(tmp_path / "u.zip", out)
        assert sorted(p.name for p in out.iterdir()) == ["data.csv"]  # only what was there before

    refused(_zip_bytes([("img/a.png", b"1"), ("img/a.png", b"2")]), "'img/a.png' appears twice")
    refused(_zip_bytes([("img/A.png", b"1"), ("img/a.png", b"2")]), "appears twice")
    refused(_zip_bytes([("img", b"1"), ("img/a.png", b"2")]), "'img' is both a file and a folder")
    # encrypted: the flag bit set on an otherwise valid entry
    data = bytearray(_zip_bytes([("img/a.png", b"secret")]))
    data[6] |= 1  # local header flag
    central = data.rfind(b"PK\x01\x02")
    data[central + 8] |= 1  # central directory flag
    refused(bytes(data), "'img/a.png' is encrypted")
    # forged size: the header says 10 bytes, the data inflates to 10 MB
    data = bytearray(_zip_bytes([("img/ok.png", b"x" * 100), ("img/big.bin", b"\0" * 10_000_000)]))
    central = data.rfind(b"PK\x01\x02")
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")
    refused(bytes(data), "'img/big.bin' is corrupt")
    refused(b"PK\x03\x04" + os.urandom(200), "not a valid zip")
    refused(b"", "not a valid zip")


# --- 6. images, checkpoints and error text ------------------------------------------------


def test_bad_images_get_specific_messages_without_server_paths(app, tmp_path):
    from mmdemo.imaging import decode_image

    cases = {
        "empty.png": (b"", "the file is empty"),
        "noise.png": (os.urandom(4096), "not an image in a supported format"),
    }
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, "PNG")
    cases["bomb.png"] = (bomb.getvalue(), "over the limit of 40,000,000")
    for name, (data, match) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=match) as e:
            decode_image(tmp_path / name, name="the image")
        assert str(tmp_path) not in str(e.value)


def test_checkpoint_errors_name_no_server_path_and_unknown_keys_are_refused(tmp_path):
    path = save_checkpoint(build_model(tiny_config()), tmp_path / "secret-place" / "ck")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "colour": "red"}))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]") as e:
        load_checkpoint(path)
    assert "secret-place" not in str(e.value)
    (path / "config.json").write_text(json.dumps({**config, "calibration": {}, "scope": {}}))  # reserved keys
    read_config(path)
    (path / "config.json").write_text(json.dumps(config))
    (path / "model.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))  # a pickle is never loaded
    with pytest.raises(ValueError, match="not a readable safetensors file") as e:
        load_checkpoint(path)
    assert "secret-place" not in str(e.value)


# --- 4. nothing left behind ---------------------------------------------------------------


def test_start_up_removes_half_written_checkpoints_and_stale_uploads(tmp_path):
    writable = tmp_path / "mine"
    save_checkpoint(build_model(tiny_config()), writable / A / "good")
    for name in (".good.abc123.tmp", ".good.old"):
        (writable / A / name).mkdir()
        (writable / A / name / "model.safetensors").write_bytes(b"half")
    registry = CheckpointRegistry(writable, tmp_path / "shipped")
    assert sorted(registry.clean()) == [f"{A}/.good.abc123.tmp", f"{A}/.good.old"]
    assert sorted(p.name for p in (writable / A).iterdir()) == ["good"]

    uploads = tmp_path / "tmp"
    uploads.mkdir()
    # folders of a server that has ended (its job's data kept for a resume), of another server
    # still running in the same TMPDIR, of this process, and one of an older release (no process
    # in its name), an hour old
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended_tag = process_tag(ended.pid)
    ended.wait()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for _ in range(50):  # until its /proc entry has its start time
            running_tag = process_tag(running.pid)
            if not running_tag.endswith(".0"):
                break
            time.sleep(0.1)
        stale, kept = (uploads / f"mmdemo-upload-{ended_tag}-{i}" for i in range(2))
        live = uploads / f"mmdemo-upload-{running_tag}-x"
        legacy = uploads / "mmdemo-upload-abc123"
        for folder in (stale, kept, live, legacy):
            folder.mkdir()
        os.utime(legacy, (time.time() - 3600, time.time() - 3600))
        mine = UploadFolder(uploads)
        assert sorted(sweep_uploads(uploads, keep={kept}, older_than_s=60)) == sorted([stale.name, legacy.name])
        assert kept.is_dir() and live.is_dir() and mine.path.is_dir()
    finally:
        running.kill()
        running.wait()
    assert sweep_uploads(uploads, keep={kept}) == [live.name]  # its process has ended
    with UploadFolder(uploads) as upload:
        (upload.path / "x").write_text("x")
    assert not upload.path.exists()


def test_example_dataset_is_made_once(app):
    first = app.example_dataset()
    assert app.example_dataset() == first and all(Path(p).is_file() for p in first)


def test_empty_gradio_cache_folders_are_removed_once_old(tmp_path):
    from mmdemo.ui.cache import sweep_empty_cache_folders

    old_empty, old_full, new_empty = (tmp_path / n for n in ("a", "b", "c"))
    for folder in (old_empty, old_full, new_empty):
        folder.mkdir()
    (old_full / "image.webp").write_bytes(b"x")
    for folder in (old_empty, old_full):
        os.utime(folder, (time.time() - 600, time.time() - 600))
    assert sweep_empty_cache_folders(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "c"]


def test_an_evaluations_names_and_texts_show_as_text_and_a_crafted_filter_finds_nothing(app, tmp_path):
    import gradio as gr
    from PIL import Image

    from mmdemo.evaluation.engine import EvalResult, RowResult
    from mmdemo.evaluation.ratings import RatingStore
    from mmdemo.ui.evaluate import Evaluation

    evaluation = Evaluation(app, RatingStore(tmp_path / "ratings"))
    token = app.new_token()
    image = tmp_path / "x.png"
    Image.new("RGB", (24, 24), (255, 0, 0)).save(image)
    hostile = "x`<img src=x onerror=alert(1)>"
    row = RowResult(
        0, 2, str(image), hostile, f"what is {hostile}?", "red", "red", 0.9, True, {"red": 0.9, "blue": 0.1},
        (12.0, 12.0), [[0.5] * 4] * 4, {},
    )  # fmt: skip
    result = EvalResult("sort-of-clevr", "raw", hostile, ["red", "blue"], [row], [], n_total=1)
    evaluation.results.put(app.visitor(token), result=result, data=None, slice=None)
    status = evaluation.views(app.visitor(token))[0]
    _, detail = evaluation.select_row(gr.SelectData(None, {"index": [0, 0], "value": 0, "row_value": [0]}), token)
    for shown in (status, detail):
        assert "<img" not in shown and "&lt;img" in shown and "\\`" in shown  # the backtick cannot close a span
    table, count = evaluation.filter(False, "(all)", "not-a-label", "(all)", False, token)
    assert table["value"] == [] and "0" in count
