"""Fine-tune jobs on the server started as a Space starts it (``python app.py``, tests/space.py):
two visitors' jobs run one at a time, each in a worker that is a child of the server (never of
another worker, never a re-run of app.py); SIGTERM to the server ends its worker at the next step
and leaves the job resumable on the next server; and a browser predicts on that server.

Runs are held where the test needs them: a worker is paused (SIGSTOP) as soon as the server
names it in the job record and continued (SIGCONT) when the test has looked, so no check races
a real run.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402

from ..space import Space, parent_pid  # noqa: E402


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), colour).save(buf, "PNG")
    return buf.getvalue()


def _dataset(folder: Path) -> tuple[Path, str]:
    """Ten rows of red and blue squares (labels the tiny shipped model knows) and their zip."""
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(10):
        (folder / "img" / f"{i}.png").write_bytes(_png((255, 0, 0) if i % 2 else (0, 0, 255)))
        rows.append([f"img/{i}.png", "what colour is the square?", "red" if i % 2 else "blue"])
    with open(folder / "data.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "text", "label"], *rows])
    return folder / "data.csv", shutil.make_archive(str(folder / "images"), "zip", root_dir=folder, base_dir="img")


def _start(client: Client, data, name: str, epochs: int, token: str | None = None) -> dict:
    csv_path, archive = data
    return client.predict(
        handle_file(str(csv_path)), handle_file(archive), "image", "text", "label", "sort-of-clevr",
        epochs, 3e-3, 4, [], 0.2, name, False, owner_token=token, api_name="/start_finetune",
    )  # fmt: skip


def _client(space: Space) -> Client:
    """An API client with room for a loaded machine (a worker importing torch beside the server)."""
    return Client(space.url, verbose=False, httpx_kwargs={"timeout": 120})


def _status(client: Client, token: str) -> dict:
    return client.predict(owner_token=token, api_name="/finetune_status")


def _jobs_dir(space: Space) -> Path:
    """The server's job records (in its data folder, under the Space's HOME)."""
    return space.data_dir / "jobs"


def _record(space: Space, checkpoint: str) -> dict | None:
    for path in _jobs_dir(space).glob("*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced
        if record["checkpoint"] == checkpoint:
            return record
    return None


def _held_worker(space: Space, checkpoint: str, timeout: float = 60) -> int:
    """Pause the worker of the job training ``checkpoint`` as soon as the server names it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = _record(space, checkpoint)
        if record and record.get("worker"):
            os.kill(record["pid"], signal.SIGSTOP)
            return record["pid"]
        time.sleep(0.01)
    raise AssertionError(f"no worker started for {checkpoint!r}:\n{space.output()[-3000:]}")


def _workers(space: Space) -> list[int]:
    """The Space's processes other than the server (its process group): fine-tune workers,
    each started as ``python -m mmdemo.app.worker``, never a spawned re-run of app.py."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != space.process.pid:
            try:
                if os.getpgid(int(entry.name)) == space.process.pid and not _gone(int(entry.name)):
                    assert b"-m\0mmdemo.app.worker\0" in (entry / "cmdline").read_bytes()
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_two_visitors_jobs_run_one_at_a_time_each_in_a_child_of_the_server(tmp_path):
    with Space(tmp_path) as space:
        server = space.process.pid
        alice, bob = _client(space), _client(space)
        alice_token = _start(alice, _dataset(tmp_path / "a"), "alice-model", epochs=2)["owner_token"]
        alice_worker = _held_worker(space, "alice-model")
        try:
            queued = _start(bob, _dataset(tmp_path / "b"), "bob-model", epochs=1)
            bob_token = queued["owner_token"]
            assert queued["state"] == "queued" and queued["message"] == "queued: position 1 of 1"
            assert queued["queue_position"] == 1
            assert _status(alice, alice_token)["state"] == "preparing"  # each sees their own
            assert _status(bob, bob_token)["queue_position"] == 1
            assert parent_pid(alice_worker) == server and _workers(space) == [alice_worker]  # one at a time
            bob_data = Path(_record(space, "bob-model")["data"]["folder"])
            assert (bob_data / "data.csv").is_file()
            assert (
                _client(space).predict(owner_token=alice_token, api_name="/stop_finetune")["message"] == "stopping ..."
            )
        finally:
            os.kill(alice_worker, signal.SIGCONT)

        bob_worker = _held_worker(space, "bob-model")  # alice's ended: bob's runs, as the server's child
        try:
            assert parent_pid(bob_worker) == server and _gone(alice_worker) and _workers(space) == [bob_worker]
            assert _status(alice, alice_token)["state"] == "stopped"  # stopping alice did not end bob
            assert _status(bob, bob_token)["state"] == "preparing" and (bob_data / "data.csv").is_file()
        finally:
            os.kill(bob_worker, signal.SIGCONT)
        done = _wait(lambda: (s := _status(bob, bob_token))["state"] not in ("preparing", "running") and s, 180, "bob")
        assert done["state"] == "done", done["message"]

        records = [json.loads(p.read_text()) for p in _jobs_dir(space).glob("*.json")]
        assert sorted(r["state"] for r in records) == ["done", "stopped"]  # nothing marked interrupted
        assert (Path(_record(space, "bob-model")["target"]) / "config.json").is_file()
        assert not bob_data.exists()  # bob's data went when his job ended, not before
        # upload folders: only the server's own (its work folder); none named after a worker
        tags = {re.match(r"mmdemo-upload-(\d+)\.", p.name).group(1) for p in space.tmp.glob("mmdemo-upload-*")}
        assert tags <= {str(server)}, sorted(p.name for p in space.tmp.glob("mmdemo-upload-*"))
        log = space.output()
        assert "Traceback" not in log and "restarted while" not in log, log[-3000:]


def test_sigterm_to_the_server_ends_its_worker_and_the_next_server_resumes_the_job(tmp_path):
    data = _dataset(tmp_path / "d")
    with Space(tmp_path) as space:
        client = _client(space)
        token = _start(client, data, "long", epochs=8)["owner_token"]
        target = Path(_wait(lambda: (r := _record(space, "long")) and r.get("worker") and r, 60, "a worker")["target"])
        state = target.parent / f".{target.name}.resume" / "state.json"
        record = _wait(lambda: state.is_file() and _record(space, "long"), 180, "the first saved epoch")
        worker = record["pid"]
        os.kill(worker, signal.SIGSTOP)  # held mid-run, after its first saved epoch
        try:
            assert _record(space, "long")["state"] == "running"
            assert space.signal(signal.SIGTERM, timeout=60) == 0  # a clean exit; it told its worker
        finally:
            os.kill(worker, signal.SIGCONT)
        _wait(lambda: _gone(worker), 30, "the worker to end")  # it stopped at its next step
        record = _record(space, "long")
        assert record["state"] == "interrupted" and "Resume continues after epoch" in record["message"], record
        assert state.is_file() and (Path(record["data"]["folder"]) / "data.csv").is_file()
        first_log = space.output()
        assert "Traceback" not in first_log, first_log[-3000:]

    with Space(tmp_path) as space:  # the same checkout, HOME and TMPDIR: the next server
        client = _client(space)
        status = _status(client, token)
        assert status["state"] == "interrupted" and status["resumable"], status
        saved = len(status["history"])
        assert saved >= 1
        status = client.predict(owner_token=token, api_name="/resume_finetune")
        assert status["state"] in ("queued", "preparing", "running"), status
        done = _wait(lambda: (s := _status(client, token))["state"] not in ("queued", "preparing", "running") and s,
                     240, "the resumed job")  # fmt: skip
        assert done["state"] == "done", done["message"]
        epochs = [h["epoch"] for h in done["history"]]
        assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) > saved  # continued, not restarted
        assert "Traceback" not in space.output()


@pytest.mark.skipif(
    not os.path.exists("/usr/bin/chromium") and os.environ.get("MMDEMO_REQUIRE_BROWSER") != "1",
    reason="Debian's chromium is not installed",
)
def test_predict_in_the_browser_on_the_server_started_as_app_py(tmp_path, fixture_path):
    playwright = pytest.importorskip("playwright.sync_api")
    from ..browser import DESKTOP, browser

    with Space(tmp_path) as space, browser() as chromium:
        page = chromium.new_page(viewport=DESKTOP)
        page.goto(space.url)
        page.locator("#image-input input[type=file]").set_input_files(fixture_path("chelsea.jpg"))
        page.locator("#text-input textarea").fill("What shape is the red object?")
        page.locator("#predict-button").click()
        label = page.locator("#prediction")
        playwright.expect(label).to_contain_text("%", timeout=90_000)
        assert re.search(r"\d+(\.\d+)? ?%", label.inner_text())
        assert "Traceback" not in space.output()
