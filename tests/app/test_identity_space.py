"""One identity, on the server started as a Space starts it (``python app.py``, tests/space.py):
the owner token decides whose checkpoints, evaluations and ratings a request reaches, never the
session hash; many refused or other visitors' requests leave a visitor's evaluation in place;
``GET /config`` holds no server secret; a locked or a corrupt ratings file turns the ratings off,
named, while the rest serves.

Events are sent over HTTP as a browser sends them (tests/events.py), with whatever session hash
and token an attacker chooses."""

import csv
import secrets
import sqlite3
import time
from pathlib import Path

import pytest
import torch

from mmdemo.app.registry import owner_id
from mmdemo.datasets.sortofclevr import LABELS
from mmdemo.evaluation.ratings import Rating, RatingStore
from mmdemo.inference.predictor import Predictor
from mmdemo.model.checkpoint import save_checkpoint
from mmdemo.model.classifier import build_model
from mmdemo.ui.evaluate import ALL, BENCHMARK
from mmdemo.ui.identity import PUBLIC_STORAGE_KEY

from ..conftest import tiny_config
from ..events import Page
from ..space import Space

pytest.importorskip("gradio_client")


def _own_checkpoint(space: Space, token: str, name: str) -> None:
    """A checkpoint of the token's owner, where the Space keeps visitors' checkpoints."""
    torch.manual_seed(3)
    folder = space.data_dir / "checkpoints" / owner_id(token) / name
    save_checkpoint(build_model(tiny_config(labels=LABELS)), folder)


def _run(page: Page, token, checkpoint="sort-of-clevr") -> dict:
    return page.call("eval-run", "click", [checkpoint, "raw", BENCHMARK, 1, None, None, token])


def _rows(page: Page, token) -> dict:
    return page.call("eval-wrong-only", "input", [False, ALL, ALL, ALL, False, token])


def _select_first_row(page: Page, token) -> dict:
    table = _rows(page, token)["data"][0]["value"]
    first = table["data"][0]
    return page.call("eval-rows", "select", [token], {"index": [0, 0], "value": first[0], "row_value": first})


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    with Space(tmp_path_factory.mktemp("identity")) as space:
        yield space


def test_config_holds_no_server_secret(space):
    page = Page(space.url)
    states = [c for c in page.config["components"] if c["type"] == "browserstate"]
    assert len(states) == 3  # the owner token, the fine-tune form, the open tab
    assert {c["props"]["secret"] for c in states} == {PUBLIC_STORAGE_KEY}  # stated as public in identity.py
    assert all(c["props"].get("value") in (None, {}, "predict") for c in states)  # no token in the page
    assert not list(space.root.rglob("browser-secret"))


def test_a_replayed_session_hash_reaches_nothing_of_its_visitor(space):
    alice_token, bob_token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    _own_checkpoint(space, alice_token, "alice-model")
    alice = Page(space.url)
    assert "alice-model" in str(alice.call("eval-checkpoint", "focus", [alice_token])["data"][0]["choices"])
    assert "done" in str(_run(alice, alice_token, "alice-model")["data"][0])
    _select_first_row(alice, alice_token)
    saved = alice.call("eval-save-rating", "click", ["right", "alice: on the object", alice_token])
    assert "Saved rating" in str(saved["data"][0])

    for token in (None, bob_token):  # bob replays alice's session hash, with no token or his own
        bob = Page(space.url, session_hash=alice.session_hash)
        choices = bob.call("eval-checkpoint", "focus", [token])["data"][0]["choices"]
        assert "alice-model" not in str(choices) and "sort-of-clevr" in str(choices)
        refused = "unknown checkpoint 'alice-model'" if token else "The page is still starting"
        assert refused in _run(bob, token, "alice-model")["error"]
        refused = "Run an evaluation first." if token else "The page is still starting"
        assert _rows(bob, token)["error"].startswith(refused)
        rated = bob.call("eval-save-rating", "click", ["wrong", "bob as alice", token])
        assert "error" in rated and "Saved" not in str(rated)
        assert "error" in bob.call("eval-report", "click", [token])
    # bob's own export has none of alice's ratings, and no token exports nothing
    exported = Page(space.url, session_hash=alice.session_hash).call("eval-export-ratings", "click", [bob_token])
    rows = list(csv.DictReader(open(exported["data"][0]["path"], newline="")))
    assert rows == []
    assert "The page is still starting" in Page(space.url).call("eval-export-ratings", "click", [None])["error"]
    mine = list(csv.DictReader(open(alice.call("eval-export-ratings", "click", [alice_token])["data"][0]["path"])))
    assert [(r["comment"], r["rater"]) for r in mine] == [("alice: on the object", owner_id(alice_token))]
    assert RatingStore(space.data_dir).all(rater=owner_id(bob_token)) == []  # nothing was saved as anybody


def test_many_refused_and_other_visitors_requests_keep_a_visitors_evaluation(space):
    token = secrets.token_urlsafe(32)
    visitor = Page(space.url)
    assert "done" in str(_run(visitor, token)["data"][0])
    before = _rows(visitor, token)["data"]
    for _ in range(40):  # each once made an entry in a 32-entry store
        stranger = Page(space.url)
        answer = stranger.call("eval-save-rating", "click", ["right", "", secrets.token_urlsafe(32)])
        assert answer["error"] == "Run an evaluation first."
    for _ in range(3):  # other visitors' finished runs are theirs: nothing of this one goes
        assert "done" in str(_run(Page(space.url), secrets.token_urlsafe(32))["data"][0])
    assert _rows(visitor, token)["data"] == before
    assert "20 of 20 rows match" in str(before[1])
    assert "Traceback" not in space.output()
    assert space.output().count("rejected input: Run an evaluation first.") >= 40  # one line per refusal


def _predict_answers(space: Space) -> None:
    from gradio_client import Client, handle_file

    shipped = space.checkout / "checkpoints" / "sort-of-clevr"
    first = next(csv.DictReader(open(shipped / "examples" / "examples.csv", newline="")))
    image = shipped / "examples" / first["image"]
    label = Client(space.url, verbose=False).predict(handle_file(str(image)), first["text"], api_name="/predict")[0]
    alone = Predictor.from_checkpoint(shipped, "cpu").predict(image, first["text"])
    assert label["label"] == alone.label, label  # the answer Python's Predictor gives
    assert [c["label"] for c in label["confidences"]] == sorted(alone.scores, key=alone.scores.get, reverse=True)[:3]


def _ratings_note(space: Space) -> str:
    return str(Page(space.url).component("eval-ratings-note")["props"]["value"])


def test_a_locked_ratings_file_turns_ratings_off_and_the_rest_serves(tmp_path):
    space = Space(tmp_path)
    space.data_dir.mkdir(parents=True)
    RatingStore(space.data_dir).add(Rating("a-x", "sort-of-clevr", "h", "n.png", "q?", "circle", "raw", "right"))
    holder = sqlite3.connect(space.data_dir / "ratings.sqlite", isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("UPDATE ratings SET comment = comment")  # another program holds the file
    try:
        started = time.monotonic()
        with space:
            took = time.monotonic() - started
            note = _ratings_note(space)
            assert "ratings.sqlite is locked by another program" in note and str(space.data_dir) not in note
            _predict_answers(space)
            token = secrets.token_urlsafe(32)
            page = Page(space.url)
            assert "done" in str(_run(page, token)["data"][0])  # Evaluate runs without its ratings
            _select_first_row(page, token)
            refused = page.call("eval-save-rating", "click", ["right", "", token])["error"]
            assert "ratings.sqlite is locked" in refused
            output = space.output()
            assert "Traceback" not in output and output.count(str(space.data_dir / "ratings.sqlite")) == 1
        assert took < 60  # no 30 s wait for the lock (this includes starting Python and the app)
    finally:
        holder.close()


def test_a_corrupt_ratings_file_is_moved_aside_and_the_rest_serves(tmp_path):
    space = Space(tmp_path)
    space.data_dir.mkdir(parents=True)
    (space.data_dir / "ratings.sqlite").write_bytes(b"not a database " * 500)
    with space:
        aside = [p.name for p in Path(space.data_dir).iterdir() if p.name.startswith("ratings.sqlite.corrupt-")]
        assert len(aside) == 1 and not (space.data_dir / "ratings.sqlite").exists()
        note = _ratings_note(space)
        assert "ratings.sqlite is not a readable ratings database" in note and aside[0] in note
        _predict_answers(space)
        assert "Traceback" not in space.output()


def test_a_replayed_session_hash_does_not_redraw_its_visitors_prediction(space):
    import httpx

    example = next((space.checkout / "checkpoints" / "sort-of-clevr" / "examples").glob("scene_*.png"))
    with open(example, "rb") as f:
        uploaded = httpx.post(f"{space.url}/gradio_api/upload", files={"files": (example.name, f, "image/png")})
    image = {"path": uploaded.json()[0], "meta": {"_type": "gradio.FileData"}, "orig_name": example.name}
    token = secrets.token_urlsafe(32)
    alice = Page(space.url)
    answered = alice.call("predict-button", "click", [image, "What shape is the red object?", None, "raw", 0.5, token, None])
    assert "data" in answered  # the prediction, kept in alice's session for her word clicks
    word = {"index": 0, "value": ["What", 0.5], "selected": True}
    bob = Page(space.url, session_hash=alice.session_hash)
    for sent in (None, {**image, "path": image["path"] + "x"}):  # no image, or not the one she sent
        redrawn = bob.call("words", "select", [None, 0.5, sent], word)
        assert "error" in redrawn or all(
            isinstance(v, dict) and v.get("__type__") == "update" and "value" not in v for v in redrawn["data"][:3]
        ), redrawn  # nothing of hers is drawn (a gr.State output never reaches the client)
    # her state is left as it was: her own word click still redraws
    overlay = alice.call("words", "select", [None, 0.5, image], word)["data"][0]
    assert isinstance(overlay, dict) and (overlay.get("path") or (overlay.get("value") or {}).get("path")), overlay
