"""The server started the way a Hugging Face Space starts it: ``python app.py`` in a checkout,
with no ``MMDEMO_*`` variables, on loopback.

A Space runs ``app.py`` as ``__main__``: processes the app spawns re-import that script, which
an in-process server (``tests/browser.py``'s ``serve``) never shows. ``Space`` copies the
checkout's ``app.py`` and ``mmdemo/`` into a test folder beside a ``checkpoints/`` folder of
its own (a tiny model by default, so fine-tunes take seconds), points HOME and TMPDIR into the
test folder (the data folder is then ``~/.local/share/mmdemo`` there) and runs ``python app.py``
in a new process group. ``stop()`` ends the group: the server and every process it started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

from mmdemo.datasets.sortofclevr import LABELS, task_spec, write_examples
from mmdemo.model.checkpoint import save_checkpoint
from mmdemo.model.classifier import build_model

from .conftest import tiny_config

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 90.0


def tiny_shipped(folder: Path, labels: list[str] | None = None) -> Path:
    """A tiny shipped 'sort-of-clevr' checkpoint (with examples and its task) in ``folder``."""
    torch.manual_seed(0)
    path = save_checkpoint(build_model(tiny_config(labels=labels or LABELS)), folder / "sort-of-clevr")
    write_examples(path / "examples")
    config = json.loads((path / "config.json").read_text())
    config["task"] = task_spec()
    (path / "config.json").write_text(json.dumps(config))
    return path


def parent_pid(pid: int) -> int:
    """The parent of process ``pid`` (Linux's /proc; the name may hold spaces or ')')."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Space:
    """``python app.py`` in a copy of the checkout under ``root``; a context manager."""

    def __init__(self, root: Path, shipped: str = "tiny", env: dict | None = None, labels: list[str] | None = None):
        self.root = Path(root)
        self.checkout = self.root / "space"
        self.home = self.root / "home"
        self.tmp = self.root / "tmp"
        for folder in (self.checkout, self.home, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        if not (self.checkout / "app.py").exists():
            shutil.copy2(REPO / "app.py", self.checkout / "app.py")
            shutil.copytree(REPO / "mmdemo", self.checkout / "mmdemo", ignore=shutil.ignore_patterns("__pycache__"))
            if shipped == "tiny":
                tiny_shipped(self.checkout / "checkpoints", labels)
            else:
                shutil.copytree(REPO / "checkpoints", self.checkout / "checkpoints")
        self.extra_env = dict(env or {})
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.log = self.root / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        """The app's data folder as the app decides it with no MMDEMO_DATA_DIR."""
        return self.home / ".local" / "share" / "mmdemo"

    def environment(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MMDEMO_", "GRADIO_", "XDG_"))}
        env.update(
            HOME=str(self.home),
            TMPDIR=str(self.tmp),
            GRADIO_SERVER_PORT=str(self.port),
            GRADIO_ANALYTICS_ENABLED="False",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            PYTHONUNBUFFERED="1",
        )
        env.pop("PYTHONPATH", None)  # the copied package, not the checkout's
        env.update(self.extra_env)
        return env

    def start(self) -> Space:
        self.port = free_port()
        log = open(self.log, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "app.py"],
            cwd=self.checkout,
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches its workers too
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.process.returncode}:\n{self.output()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/gradio_api/info", timeout=5) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"app.py did not answer within {START_TIMEOUT_S:.0f} s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Send ``sig`` to the server process alone (not its workers); its exit code."""
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """End the server and every process of its group (a container stopping)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)
        self.process = None

    def __enter__(self) -> Space:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
