"""The app: handlers map service results to component values; a live server answers
gradio_client calls (predict, and a one-epoch fine-tune through the API), with the API page
its callers were written against."""

import csv
import json
import socket
import time
from pathlib import Path

import pytest
from PIL import Image

gr = pytest.importorskip("gradio")

from mmdemo import ui  # noqa: E402
from mmdemo.app.registry import CheckpointRegistry  # noqa: E402
from mmdemo.datasets.sortofclevr import write_examples  # noqa: E402
from mmdemo.model.checkpoint import save_checkpoint  # noqa: E402
from mmdemo.model.classifier import build_model  # noqa: E402
from mmdemo.ui.predict import redraw  # noqa: E402

from ..conftest import tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    shipped = root / "shipped"
    path = save_checkpoint(
        build_model(tiny_config(labels=["circle", "square", "left", "right"])), shipped / "sort-of-clevr"
    )
    write_examples(path / "examples")
    return ui.App(CheckpointRegistry(root / "mine", shipped), work_dir=str(root / "work"))


def test_predict_handler_maps_results_to_components(app, fixture_path):
    scores, explanation, overlay, words, grid, matrix, regions, modality, info, banner, answers, state = ui.PredictTab(
        app
    ).answer(fixture_path("chelsea.jpg"), "Where is the cat?", "sort-of-clevr", "gradient", 0.5)
    assert set(scores) == {"circle", "square", "left", "right"} and sum(scores.values()) == pytest.approx(1, abs=1e-5)
    assert explanation["label"] == max(scores, key=scores.get)
    assert explanation["tokens"] == ["Where", "is", "the", "cat", "?"]
    assert len(explanation["heatmap"]) == 8 and explanation["image_size"] == [451, 300]
    assert isinstance(overlay["value"], Image.Image) and overlay["value"].size == (451, 300)
    assert [w for w, _ in words] == explanation["tokens"] and all(0 <= s <= 1 for _, s in words)
    assert isinstance(grid, Image.Image) and isinstance(regions, Image.Image)
    matrix, modality = json.loads(matrix.plot), json.loads(modality.plot)  # plotly JSON, as gr.Plot sends it
    assert matrix["data"][0]["type"] == "heatmap" and len(matrix["data"][0]["y"]) == len(explanation["tokens"])
    assert {t["name"] for t in modality["data"]} == {"both", "image only", "text only"}
    assert "ms on cpu" in info
    # no scope statistics in this checkpoint: in scope, no banner, the answer is shown
    assert explanation["in_scope"] is True and explanation["scope"]["fitted"] is False and banner == ""
    assert answers == "" and list(explanation["tasks"]) == ["label"]  # one task: no table of answers
    # selecting a word redraws the overlay from that word's own map and marks the word, without the model
    overlay, words, new_grid, new_state = redraw(
        state, 0.5, gr.SelectData(None, {"index": 3, "value": "cat", "selected": True})
    )
    assert new_state["selected"] == 3 and overlay["value"].size == (451, 300) and "“cat”" in overlay["label"]
    assert words[3][0] == "[cat]" and new_grid.tobytes() != grid.tobytes()
    _, words, _, new_state = redraw(new_state, 0.5, gr.SelectData(None, {"index": 3, "value": "[cat]"}))
    assert new_state["selected"] is None and words[3][0] == "cat"  # a second click deselects


def test_predict_handler_errors_are_clear_and_logged_in_one_line(app, tmp_path, fixture_path, caplog):
    answer = ui.PredictTab(app).answer
    with pytest.raises(gr.Error, match="type a question") as e:
        answer(fixture_path("chelsea.jpg"), "  ", None, None, 0.5)
    assert e.value.print_exception is False  # Gradio prints no traceback for it
    assert [r.getMessage() for r in caplog.records] == [
        "predict: rejected input: Please type a question or a description of the image."
    ]
    with pytest.raises(gr.Error, match="upload an image"):
        answer(None, "hi", None, None, 0.5)
    broken = tmp_path / "upload.png"
    broken.write_bytes(b"garbage")
    with pytest.raises(gr.Error) as e:
        answer(str(broken), "hi", None, None, 0.5)
    assert "the image: not an image" in str(e.value) and str(tmp_path) not in str(e.value)


def test_csv_columns_are_guessed_from_the_content(tmp_path):
    (tmp_path / "d.csv").write_text(
        "filename,caption,category\n"
        + "".join(f"img_{i}.jpg,a photo of thing number {i},{'cat' if i % 2 else 'dog'}\n" for i in range(26))
    )
    updates = ui.csv_columns(str(tmp_path / "d.csv"))
    # the text and label fields take several columns: the guess is one of each
    assert [u["value"] for u in updates] == ["filename", ["caption"], ["category"]]


def test_csv_columns_are_guessed_by_name_without_rows(tmp_path):
    (tmp_path / "d.csv").write_text("Path,Question,Answer,extra\n")
    updates = ui.csv_columns(str(tmp_path / "d.csv"))
    assert [u["value"] for u in updates] == ["Path", ["Question"], ["Answer"]]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(app):
    demo = ui.create_demo(app)
    demo.queue(max_size=16).launch(
        server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, ssr_mode=False, quiet=True
    )
    yield demo
    demo.close()


def _tiny_dataset(folder):
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(10):
        Image.new("RGB", (24, 24), (255, 0, 0) if i % 2 else (0, 0, 255)).save(folder / "img" / f"{i}.png")
        rows.append([f"img/{i}.png", "which colour is it?", "red" if i % 2 else "blue"])
    with open(folder / "data.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "text", "label"], *rows])
    import shutil

    return folder / "data.csv", shutil.make_archive(str(folder / "images"), "zip", root_dir=folder, base_dir="img")


def test_live_server_predict_and_fine_tune(server, app, fixture_path, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(server.local_url, verbose=False)
    result = client.predict(handle_file(fixture_path("chelsea.jpg")), "What shape is the cat?", api_name="/predict")
    label, explanation = result[0], result[1]
    alone = app.registry.predictor("sort-of-clevr").predict(fixture_path("chelsea.jpg"), "What shape is the cat?")
    assert label["label"] == alone.label  # the answer Python's Predictor gives
    assert label["label"] == max(explanation["scores"], key=explanation["scores"].get)
    assert set(explanation["scores"]) == {"circle", "square", "left", "right"}
    assert explanation["tokens"][:3] == ["What", "shape", "is"] and len(explanation["peak_xy"]) == 2

    csv_path, archive = _tiny_dataset(tmp_path / "upload")
    # the five arguments of before: the report and the recipe's plan with its time estimate
    report = client.predict(handle_file(str(csv_path)), handle_file(archive), "image", "text", "label",
                            api_name="/preflight")  # fmt: skip
    assert "10 rows accepted" in report and "epochs = " in report and "estimated time on this machine" in report
    status = client.predict(
        handle_file(str(csv_path)),
        handle_file(archive),
        "image",
        "text",
        "label",
        "sort-of-clevr",
        1,
        3e-3,
        4,
        [],
        0.2,
        "tuned-by-api",
        False,
        api_name="/start_finetune",
    )
    assert status["state"] in ("queued", "preparing", "running") and len(status["owner_token"]) >= 32
    token = status["owner_token"]
    deadline = time.time() + 180
    while status["state"] in ("queued", "preparing", "running") and time.time() < deadline:
        time.sleep(0.5)
        status = client.predict(token, api_name="/finetune_status")  # the token is passed, never kept
    assert status["state"] == "done", status["message"]
    assert "tuned-by-api" in app.registry.names(app.owner(token))
    # the explicit values of the README's call are the CLI's explicit flags: they win over the recipe
    assert "epochs = 1  (set by you)" in status["plan"] and not status["resumable"]
    with pytest.raises(Exception, match="cannot be resumed"):  # it ran to its end
        client.predict(None, None, token, api_name="/resume_finetune")
    # the same Client without the token is nobody: its session holds no identity
    assert client.predict(api_name="/finetune_status")["state"] == "idle"
    # a new client controls it with the token; without it the checkpoint does not exist for it
    other = Client(server.local_url, verbose=False)
    image = handle_file(str(tmp_path / "upload" / "img" / "1.png"))
    result = other.predict(image, "which colour is it?", "tuned-by-api", "gradient", 0.5, token, api_name="/predict")
    # the most probable class (a one-epoch model on 10 images may abstain in the label output): the
    # one the visitor's checkpoint gives in Python
    tuned = app.registry.predictor("tuned-by-api", app.owner(token))
    assert result[1]["label"] == tuned.predict(tmp_path / "upload" / "img" / "1.png", "which colour is it?").label
    assert set(result[1]["scores"]) == {"red", "blue"}
    with pytest.raises(Exception, match="unknown checkpoint 'tuned-by-api'"):
        other.predict(image, "which colour is it?", "tuned-by-api", api_name="/predict")
    assert other.predict(token, api_name="/finetune_status")["state"] == "done"


def test_api_page_names_and_types_every_parameter(server):
    from gradio_client import Client

    api = Client(server.local_url, verbose=False).view_api(print_info=False, return_format="dict")
    endpoints = api["named_endpoints"]
    assert set(endpoints) == {
        "/predict",
        "/preflight",
        "/start_finetune",
        "/stop_finetune",
        "/finetune_status",
        "/delete_checkpoint",
        "/resume_finetune",
    }
    for name, endpoint in endpoints.items():
        for p in endpoint["parameters"]:
            assert not p["parameter_name"].startswith("param_"), (name, p)
            assert "Literal[]" not in p["python_type"]["type"], (name, p)
        for r in endpoint["returns"]:
            assert not r["label"].startswith("value_"), (name, r)
        assert endpoint["description"], name

    predict = {p["parameter_name"]: p for p in endpoints["/predict"]["parameters"]}
    assert list(predict) == ["image", "question", "checkpoint", "method", "opacity", "owner_token", "task"]
    assert predict["task"]["python_type"]["type"] == "str" and predict["task"]["parameter_default"] is None
    assert predict["image"]["python_type"]["type"] == "filepath" and not predict["image"]["parameter_has_default"]
    assert predict["question"]["python_type"]["type"] == "str"
    # the sample code passes a shipped example scene and its question, not a stock image and "Hello!!"
    example = predict["image"]["example_input"]  # the shipped file, reachable from any folder
    assert Path(example["url"]).is_absolute() and example["url"].endswith("examples/scene_1.png")
    assert predict["question"]["example_input"] == "What shape is the red object?"
    assert predict["checkpoint"]["python_type"]["type"] == "str"  # not Literal[...]: fine-tuned ones come and go
    assert "sort-of-clevr" in predict["checkpoint"]["python_type"]["description"]
    assert predict["method"]["parameter_default"] == "raw" and predict["opacity"]["python_type"]["type"] == "float"
    returns = [r["label"] for r in endpoints["/predict"]["returns"]]
    assert returns[:2] == ["Answer", "Explanation"] and all(len(r) <= 32 for r in returns)

    start = [p["parameter_name"] for p in endpoints["/start_finetune"]["parameters"]]
    assert start == [
        "csv_file",
        "zip_file",
        "image_column",
        "text_column",
        "label_column",
        "start_from",
        "epochs",
        "learning_rate",
        "batch_size",
        "freeze",
        "validation_split",
        "name",
        "overwrite",
        "class_weights",
        "owner_token",
        "time_budget_minutes",
        "group_column",
    ]
    columns = {p["parameter_name"]: p for p in endpoints["/start_finetune"]["parameters"]}
    # a setting left out is the recipe's choice (None), as a CLI flag not given
    for setting in (
        "epochs",
        "learning_rate",
        "batch_size",
        "freeze",
        "class_weights",
        "time_budget_minutes",
        "group_column",
    ):
        assert columns[setting]["parameter_has_default"] and columns[setting]["parameter_default"] is None, setting
    preflight = [p["parameter_name"] for p in endpoints["/preflight"]["parameters"]]
    assert preflight[:5] == ["csv_file", "zip_file", "image_column", "text_column", "label_column"]
    assert preflight[5:] == [
        "start_from", "epochs", "learning_rate", "batch_size", "freeze", "class_weights", "time_budget_minutes",
        "owner_token", "group_column",
    ]  # fmt: skip
    resume = {p["parameter_name"]: p for p in endpoints["/resume_finetune"]["parameters"]}
    assert list(resume) == ["job", "time_budget_minutes", "owner_token"]
    assert resume["time_budget_minutes"]["parameter_default"] == 10.0  # the server's default budget, as the form's
    assert resume["job"]["python_type"]["type"] == "str" and resume["job"]["parameter_default"] is None
    assert columns["csv_file"]["python_type"]["type"] == "filepath" and not columns["csv_file"]["parameter_has_default"]
    assert columns["zip_file"]["python_type"]["type"] == "filepath" and columns["zip_file"]["parameter_default"] is None
    assert columns["freeze"]["python_type"]["type"] == "list[str]" and columns["epochs"]["python_type"]["type"] == "int"
    assert (columns["validation_split"]["parameter_default"], columns["name"]["parameter_default"]) == (0.1, "my-model")
    delete = {p["parameter_name"]: p for p in endpoints["/delete_checkpoint"]["parameters"]}
    assert list(delete) == ["name", "owner_token"] and delete["name"]["parameter_default"] == "my-model"
    for column in ("image_column", "text_column", "label_column"):
        assert columns[column]["python_type"]["type"] == "str"
        assert columns[column]["parameter_has_default"] and columns[column]["parameter_default"] is None
    assert columns["start_from"]["python_type"]["type"] == "str"


def _predict_sample(url: str) -> str:
    """The /predict sample code the API page shows (it renders what /info sends)."""
    import urllib.request

    with urllib.request.urlopen(url + "gradio_api/info") as response:
        return json.load(response)["named_endpoints"]["/predict"]["code_snippets"]["python"]


def test_the_api_pages_sample_runs_as_shown_from_another_folder(server, tmp_path):
    """The /predict sample, copied into a file and run from a folder that is not the repository's
    root: it gets an answer for the shipped example scene."""
    import subprocess
    import sys

    sample = _predict_sample(server.local_url)
    assert "handle_file('/" in sample and "handle_file('checkpoints/" not in sample
    (tmp_path / "sample.py").write_text(sample)
    run = subprocess.run(
        [sys.executable, "sample.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "'label':" in run.stdout  # the answer, printed


def test_on_a_space_the_sample_image_is_the_spaces_own_address(app, server, monkeypatch):
    """On a Space anyone can run the sample: its image is the example the Space serves, at the
    Space's address, with no path of the server's disk in it."""
    monkeypatch.setenv("SPACE_HOST", "someone-mmdemo.hf.space")
    demo = ui.create_demo(app)
    try:
        url = demo.get_api_info()["named_endpoints"]["/predict"]["parameters"][0]["example_input"]["url"]
    finally:
        demo.close()
    assert url.startswith("https://someone-mmdemo.hf.space/gradio_api/file=") and url.endswith("/scene_1.png")
    assert "checkpoints" not in url
    import urllib.request

    served = url.replace("https://someone-mmdemo.hf.space/", server.local_url)  # the same copy, served here
    with urllib.request.urlopen(served) as response:
        assert response.status == 200 and Image.open(response).size == (75, 75)


def test_no_hidden_widget_carries_the_api(server):
    """The named endpoints are declared in ui/api.py (gr.api, and /predict on the Predict tab's
    own components): the page holds no hidden button, number, text or JSON for them."""
    hidden = [
        (c["type"], c["props"].get("elem_id"))
        for c in server.config["components"]
        if c["props"].get("visible") is False and c["type"] in ("button", "number", "textbox", "json", "dropdown")
    ]
    assert hidden == [("button", "resume-button")]  # shown when the visitor's job can resume
    endpoints = {fn.api_name: fn for fn in server.fns.values() if fn.api_visibility == "public"}
    assert all(not fn.targets for fn in endpoints.values()), [n for n, fn in endpoints.items() if fn.targets]


def test_the_fine_tune_api_takes_only_files_the_caller_uploaded(server, app, tmp_path, capfd):
    """gr.api hands over what was sent: a path the caller names is refused, an upload of another
    type gets the page's message, and each refusal is one log line."""
    import httpx

    base = server.local_url.rstrip("/")
    secret = tmp_path / "secret.csv"
    secret.write_text("image,text,label\n")

    def call(api: str, data: list) -> tuple[str, str]:
        with httpx.Client(timeout=60) as client:
            event = client.post(f"{base}/gradio_api/call/{api}", json={"data": data}).json()["event_id"]
            lines = client.get(f"{base}/gradio_api/call/{api}/{event}").text.splitlines()
        kind = next(line.split(":", 1)[1].strip() for line in reversed(lines) if line.startswith("event:"))
        return kind, next(line.split(":", 1)[1] for line in reversed(lines) if line.startswith("data:"))

    for sent in (str(secret), {"path": str(secret)}, {"path": str(secret), "meta": {"_type": "other"}}):
        kind, message = call("preflight", [sent])
        assert kind == "error" and "csv_file must be an uploaded file" in message, (sent, message)
    with httpx.Client(timeout=60) as client:
        uploaded = client.post(f"{base}/gradio_api/upload", files={"files": ("notes.txt", b"a,b,c\n")}).json()[0]
    notes = {"path": uploaded, "orig_name": "notes.txt", "meta": {"_type": "gradio.FileData"}}
    kind, message = call("preflight", [notes])
    assert (kind, json.loads(message)["error"]) == ("error", "'notes.txt' is not a .csv file: upload a .csv")
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    # a FileData naming a file nobody uploaded: Gradio itself refuses it before any handler
    jobs = len(app.jobs.records())
    kind, _ = call("start_finetune", [{"path": str(secret), "meta": {"_type": "gradio.FileData"}}])
    assert kind == "error" and len(app.jobs.records()) == jobs  # no job was made of it


def test_bad_input_through_the_api_is_one_log_line_not_a_traceback(server, fixture_path, capfd, caplog):
    from gradio_client import Client, handle_file

    client = Client(server.local_url, verbose=False)
    with pytest.raises(Exception, match="type a question"):
        client.predict(handle_file(fixture_path("chelsea.jpg")), "   ", api_name="/predict")
    with pytest.raises(Exception, match="unknown checkpoint 'no-such-model'"):
        client.predict(handle_file(fixture_path("chelsea.jpg")), "What shape?", "no-such-model", api_name="/predict")
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    logged = [r.getMessage() for r in caplog.records if r.name == "mmdemo.ui"]
    assert logged == [
        "predict: rejected input: Please type a question or a description of the image.",
        "predict: rejected input: unknown checkpoint 'no-such-model'; available: sort-of-clevr",
    ]


def test_job_status_line_names_the_phase_and_the_time_left():
    from mmdemo.ui.finetune import status_text

    status = {"state": "running", "progress": 0.0, "elapsed_s": 12.0, "message": "encode images: 40/150"}
    assert "encode images: 40/150" in status_text(status) and "before the first training step" in status_text(status)
    status = {
        **status,
        "progress": 0.25,
        "elapsed_s": 100.0,
        "left_s": 300.0,
        "message": "epoch 1/4, step 3/10, loss 0.5",
    }
    assert "1 min 40 s elapsed" in status_text(status) and "about 5 min 00 s left" in status_text(status)
    assert status_text({**status, "state": "idle", "message": "No fine-tune job has run yet."}) == (
        "No fine-tune job has run yet."
    )


def test_raw_http_callers_may_leave_out_trailing_parameters(server, fixture_path):
    """A client written for /predict's image and question alone (or its five inputs) still works
    over plain HTTP: the left-out checkpoint, method, opacity and owner token take their defaults."""
    import httpx

    from mmdemo.benchmarks.app_speed import read_result, upload

    base = server.local_url.rstrip("/")
    with httpx.Client(timeout=60) as client:
        path = upload(client, base, Path(fixture_path("chelsea.jpg")))
        image = {"path": path, "meta": {"_type": "gradio.FileData"}}
        for data in ([image, "Where is the cat?"], [image, "Where is the cat?", "sort-of-clevr", "raw", 0.5]):
            event = client.post(f"{base}/gradio_api/call/predict", json={"data": data}).json()["event_id"]
            outputs = read_result(client, base, event)
            assert outputs[1]["method"] == "raw" and set(outputs[1]["scores"]) == {"circle", "square", "left", "right"}


def test_csv_columns_of_a_semicolon_csv_are_its_own(tmp_path):
    (tmp_path / "d.csv").write_text(
        "filename;caption;category\n"
        + "".join(f"img_{i}.jpg;a photo, number {i};{'cat' if i % 2 else 'dog'}\n" for i in range(26))
    )
    updates = ui.csv_columns(str(tmp_path / "d.csv"))
    assert updates[0]["choices"] == ["filename", "caption", "category"]
    # the text and label fields take several columns: the guess is one of each
    assert [u["value"] for u in updates] == ["filename", ["caption"], ["category"]]


def test_a_csv_header_reaches_the_column_roles_as_text(app, tmp_path):
    header = "x`<img src=x onerror=alert(1)>*_[a](b)"
    with open(tmp_path / "d.csv", "w", newline="") as f:
        csv.writer(f).writerows([[header, "text", "label"], *([f"{i}.png", "a b c", "ab"[i % 2]] for i in range(6))])
    note, _ = ui.FinetuneTab(app).column_report(str(tmp_path / "d.csv"))
    line = next(line for line in note.splitlines() if line.startswith("- image:"))
    assert line == r"- image: 'x\`&lt;img src=x onerror=alert(1)&gt;\*\_\[a\](b)' (100% of its values are image files)"


def test_a_report_quoting_backticks_stays_one_code_block():
    from mmdemo.ui.common import code_block

    block = code_block("row 2: image path '```\n<img src=x>' must be relative")
    fence = block.splitlines()[0]
    assert fence == "````" and block.endswith("\n````")  # longer than any run inside: nothing closes it early
    assert block.count(fence) == 2


def _imbalanced_dataset(folder):
    """12 red and 2 blue pictures: imbalanced enough for the recipe to weigh the classes."""
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(14):
        colour = "blue" if i < 2 else "red"
        Image.new("RGB", (24, 24), (0, 0, 255) if i < 2 else (255, 0, 0)).save(folder / "img" / f"{i}.png")
        rows.append([f"img/{i}.png", "which colour is it?", colour])
    with open(folder / "data.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "text", "label"], *rows])
    import shutil

    return str(folder / "data.csv"), shutil.make_archive(str(folder / "images"), "zip", root_dir=folder, base_dir="img")


def test_a_custom_form_with_only_epochs_edited_overrides_only_epochs(app, tmp_path):
    from mmdemo.ui.finetune import CUSTOM

    ft = ui.FinetuneTab(app)
    csv_path, archive = _imbalanced_dataset(tmp_path / "upload")
    columns = (csv_path, archive, "image", "text", "label", "(new model)")
    # the page before any edit: Automatic on, the custom fields empty; Check data fills them in
    report, *fills = ft.check_form(*columns, 10, True, None, None, None, ["image_encoder", "text_encoder"], False, [])
    assert "(set by you)" not in report
    filled = {name: fill["value"] for name, fill in zip(CUSTOM, fills)}
    assert filled["class_weights"] is True and filled["lr"] == 1e-3 and filled["batch_size"] == 64
    assert filled["freeze"] == ["image_encoder", "text_encoder"] and filled["epochs"] >= 3

    # the user types 7 in Epochs: its input event turns Automatic off and marks epochs edited
    automatic, edited = ft.automatic_off("epochs")([])
    assert automatic is False and edited == ["epochs"]
    # the form as the page sends it now: the filled values, except the class weights box left unticked
    form = [7, filled["lr"], filled["batch_size"], filled["freeze"], False]
    report, *fills = ft.check_form(*columns, 10, automatic, *form, edited)
    plan = report.split("Training plan", 1)[1]
    assert [line for line in plan.splitlines() if "(set by you)" in line] == ["epochs = 7  (set by you)"]
    assert "class_weights = True  (largest / smallest" in plan  # still the recipe's recommendation
    assert fills[0] == gr.skip() and fills[4]["value"] is True  # the user's epochs kept, the rest refilled

    # Start sends the same: only epochs
    token = app.new_token()
    views = ft.start_form(*columns[:6], *form[:4], 0.2, "only-epochs", False, form[4], token, 10, False, edited)
    owner = app.owner(token)
    try:
        record = next(r for r in app.jobs.records() if r["checkpoint"] == "only-epochs")
        assert record["overrides"] == {"epochs": 7} and views[-1] == token
    finally:
        app.jobs.stop(owner)
        app.jobs.wait(owner, 60)
