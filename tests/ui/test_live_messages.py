"""Refusals and reports of the server started as a Space starts it (``python app.py``), through
the HTTP API a visitor's page or an API client uses: each bad input gets a message naming what
is wrong, in the visitor's words, and the server's log holds no traceback for it; a CSV header
reaches the page as text; a request with files leaves nothing behind at the root of Gradio's
cache."""

from __future__ import annotations

import csv
import gzip
import io
import json
import secrets
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image

pytest.importorskip("gradio")

from ..space import Space  # noqa: E402

FILE = {"_type": "gradio.FileData"}
XSS_HEADER = "x`<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    with Space(tmp_path_factory.mktemp("messages")) as space:
        yield space


def _png(colour=(255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), colour).save(buf, "PNG")
    return buf.getvalue()


def _upload(url: str, name: str, data: bytes) -> dict:
    r = httpx.post(f"{url}/gradio_api/upload", files={"files": (name, data)}, timeout=30)
    r.raise_for_status()
    return {"path": r.json()[0], "orig_name": name, "meta": FILE}


def _sse(text: str) -> tuple[str, object]:
    """(the last event's name, its data) of a server-sent event stream."""
    event, data = "", None
    for line in text.splitlines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data = json.loads(line.split(":", 1)[1])
    return event, data


def call(url: str, api: str, data: list) -> tuple[str, object]:
    """A named endpoint called as raw HTTP does (the JSON escapes every non-ASCII character, so a
    lone surrogate arrives as the client sent it): ("complete", outputs) or ("error", message)."""
    body = json.dumps({"data": data}).encode()
    with httpx.Client(timeout=120) as client:
        r = client.post(f"{url}/gradio_api/call/{api}", content=body, headers={"content-type": "application/json"})
        r.raise_for_status()
        event, data = _sse(client.get(f"{url}/gradio_api/call/{api}/{r.json()['event_id']}").text)
    return event, data["error"] if event == "error" and isinstance(data, dict) else data


def page_event(url: str, fn_index: int, data: list) -> tuple[str, object]:
    """An event as the page sends it (queue/join with its index; inputs left out are None):
    ("process_completed", output)."""
    inputs = len(httpx.get(f"{url}/config").json()["dependencies"][fn_index]["inputs"])
    data = [*data, *[None] * (inputs - len(data))]
    session = secrets.token_hex(6)
    with httpx.Client(timeout=120) as client:
        r = client.post(
            f"{url}/gradio_api/queue/join",
            json={"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None},
        )
        r.raise_for_status()
        with client.stream("GET", f"{url}/gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        return message["msg"], message.get("output")
    raise AssertionError("the event never completed")


def _fn_index(url: str, elem_id: str, *, trigger: str | None = None, output_elem: str | None = None) -> int:
    """The index of the event whose first input has ``elem_id`` (and, if given, whose outputs
    include ``output_elem``)."""
    config = httpx.get(f"{url}/config").json()
    ids = {c.get("props", {}).get("elem_id"): c["id"] for c in config["components"]}
    for index, dep in enumerate(config["dependencies"]):
        if dep["inputs"][:1] != [ids[elem_id]]:
            continue
        if trigger and not any(t[1] == trigger for t in dep["targets"]):
            continue
        if output_elem and ids[output_elem] not in dep["outputs"]:
            continue
        return index
    raise AssertionError(f"no event reads {elem_id!r}")


def _dataset(folder: Path, delimiter: str = ",", missing: tuple[int, ...] = ()) -> tuple[Path, Path]:
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(10):
        if i not in missing:
            (folder / "img" / f"{i}.png").write_bytes(_png((255, 0, 0) if i % 2 else (0, 0, 255)))
        rows.append([f"img/{i}.png", "which colour is it?", "red" if i % 2 else "blue"])
    with open(folder / "data.csv", "w", newline="") as f:
        csv.writer(f, delimiter=delimiter).writerows([["image", "text", "label"], *rows])
    archive = shutil.make_archive(str(folder / "images"), "zip", root_dir=folder, base_dir="img")
    return folder / "data.csv", Path(archive)


def _preflight(url: str, csv_file: dict, zip_file: dict | None) -> tuple[str, object]:
    return call(url, "preflight", [csv_file, zip_file, "image", "text", "label"])


def _no_traceback(space: Space, since: int) -> None:
    log = space.output()[since:]
    assert "Traceback" not in log, log[-3000:]


def test_a_question_with_a_broken_character_is_refused_by_name(space):
    since = len(space.output())
    image = _upload(space.url, "scene.png", _png())
    event, message = call(space.url, "predict", [image, "what colour\ud800 is it?"])
    assert event == "error"
    assert "broken character" in message and "character 12" in message, message
    assert "TypeError" not in message
    _no_traceback(space, since)


def test_a_question_of_invisible_characters_only_is_an_empty_question(space):
    since = len(space.output())
    image = _upload(space.url, "scene.png", _png())
    for question in ("\u200b\u200c\u200d", "\ufeff \u2060\u00ad", "\u3164"):
        event, message = call(space.url, "predict", [image, question])
        assert event == "error", (question, message)
        assert "Please type a question" in message and "invisible characters" in message, message
    assert call(space.url, "predict", [image, "\u200bwhich colour?"])[0] == "complete"  # text with one in it
    _no_traceback(space, since)


def test_a_method_or_an_opacity_out_of_bounds_is_named(space):
    since = len(space.output())
    image = _upload(space.url, "scene.png", _png())
    event, message = call(space.url, "predict", [image, "which colour?", "sort-of-clevr", "nope"])
    assert (event, message) == ("error", "explanation method: 'nope' is not one of raw, gradient")
    event, message = call(space.url, "predict", [image, "which colour?", "sort-of-clevr", "raw", "abc"])
    assert (event, message) == ("error", "heatmap opacity must be a number from 0 to 1, got 'abc'")
    assert call(space.url, "predict", [image, "which colour?", "sort-of-clevr", "raw", 7])[0] == "complete"
    _no_traceback(space, since)


def test_numbers_of_the_fine_tune_api_are_checked_naming_the_parameter(space, tmp_path):
    since = len(space.output())
    csv_path, archive = _dataset(tmp_path)
    files = [
        _upload(space.url, "data.csv", csv_path.read_bytes()),
        _upload(space.url, "images.zip", archive.read_bytes()),
    ]
    columns = [*files, "image", "text", "label", "(new model)"]
    cases = {
        "start_finetune": (
            (columns + ["abc"], "epochs must be a number, got 'abc'"),
            (columns + [None, None, None, None, "abc"], "validation_split must be a number, got 'abc'"),
            (columns + [None, None, None, None, 0.9], "validation_split must be at most 0.5, got 0.9"),
        ),
        "preflight": (
            (columns + [None, None, None, None, None, float("nan")], "time_budget_minutes must be a number"),
        ),
    }
    for api, calls in cases.items():
        for data, message in calls:
            event, answer = call(space.url, api, data)
            assert event == "error" and answer.startswith(message), (api, data[6:], answer)
    _no_traceback(space, since)


def test_a_gzipped_csv_is_named_as_compressed(space, tmp_path):
    since = len(space.output())
    csv_path, archive = _dataset(tmp_path)
    packed = gzip.compress(csv_path.read_bytes())
    event, message = _preflight(
        space.url, _upload(space.url, "data.csv.gz", packed), _upload(space.url, "images.zip", archive.read_bytes())
    )
    assert event == "error"
    assert message == "'data.csv.gz' is compressed (.gz): upload the .csv itself, uncompressed", message
    event, message = call(space.url, "start_finetune", [_upload(space.url, "data.csv.gz", packed)])
    assert event == "error" and message.startswith("'data.csv.gz' is compressed (.gz)"), message
    event, message = _preflight(space.url, _upload(space.url, "notes.txt", b"image,text,label\n"), None)
    assert event == "error" and message == "'notes.txt' is not a .csv file: upload a .csv", message
    event, message = _preflight(space.url, _upload(space.url, "data.csv", packed), None)  # renamed
    assert event == "error" and message == "the CSV is compressed (gzip): upload the .csv itself, uncompressed"
    _no_traceback(space, since)


@pytest.mark.parametrize("delimiter, named", [(";", "';' (semicolon)"), ("\t", "tab")])
def test_a_csv_separated_otherwise_is_read_and_the_report_names_its_separator(space, tmp_path, delimiter, named):
    csv_path, archive = _dataset(tmp_path, delimiter)
    event, report = _preflight(
        space.url,
        _upload(space.url, "data.csv", csv_path.read_bytes()),
        _upload(space.url, "images.zip", archive.read_bytes()),
    )
    assert event == "complete", report
    assert "10 rows accepted, 0 rejected" in report[0], report
    assert f"columns separated by {named}" in report[0], report


def test_missing_images_are_named_by_row_and_file(space, tmp_path):
    since = len(space.output())
    csv_path, archive = _dataset(tmp_path, missing=(1, 4, 5, 6, 7, 8, 9))
    event, report = _preflight(
        space.url,
        _upload(space.url, "data.csv", csv_path.read_bytes()),
        _upload(space.url, "images.zip", archive.read_bytes()),
    )
    assert event == "complete", report
    text = report[0]
    # spreadsheet rows: the header is row 1, img/1.png is on row 3
    assert "row 3 (img/1.png), row 6 (img/4.png), row 7 (img/5.png), row 8 (img/6.png), row 9 (img/7.png)" in text
    assert "and 2 more" in text, text
    _no_traceback(space, since)


def test_another_visitors_checkpoint_name_is_unknown_in_our_words(space):
    since = len(space.output())
    index = _fn_index(space.url, "download-name", trigger="click")
    _, output = page_event(space.url, index, ["someone-elses-model"])
    assert output["error"].startswith("unknown checkpoint 'someone-elses-model'; available: sort-of-clevr"), output
    assert "list of choices" not in json.dumps(output)
    _, output = page_event(space.url, index, ["sort-of-clevr"])  # a shipped one still downloads
    assert output.get("error") is None and output["data"][0]["orig_name"] == "sort-of-clevr.zip", output
    _no_traceback(space, since)


def test_a_csv_header_reaches_the_page_as_text(space):
    header = [XSS_HEADER, "text", "label"]
    buf = io.StringIO()
    csv.writer(buf).writerows([header, ["img/0.png", "which colour is it?", "red"], ["img/1.png", "what?", "blue"]])
    csv_file = _upload(space.url, "data.csv", buf.getvalue().encode())
    _, output = page_event(space.url, _fn_index(space.url, "csv-upload", output_elem="columns-note"), [csv_file])
    note = next(v for v in output["data"] if isinstance(v, str) and "Columns guessed" in v)
    assert "<img" not in note and "&lt;img src=x onerror=alert(1)&gt;" in note, note
    assert "`x`" not in note  # the header's backtick cannot close a code span


def test_requests_with_files_leave_no_empty_temporaries_in_the_cache(space, tmp_path):
    csv_path, archive = _dataset(tmp_path)
    for _ in range(4):
        event, _ = _preflight(
            space.url,
            _upload(space.url, "data.csv", csv_path.read_bytes()),
            _upload(space.url, "images.zip", archive.read_bytes()),
        )
        assert event == "complete"
    cache = space.tmp / "gradio"
    assert cache.is_dir()
    stray = [p.name for p in cache.iterdir() if p.is_file()]
    assert stray == [], stray
