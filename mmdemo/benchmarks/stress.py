"""The shared-server load test (``python -m mmdemo stress``): starts the app in a subprocess on a
free loopback port, with its own temporary, Gradio-cache and data folders, and prints ONE JSON
line of figures:

- ``burst``: N simultaneous ``/predict`` calls (default 100), each uploading its image as the
  browser does; admitted / refused ("queue full", HTTP 503) / failed, p50 / p95 seconds;
- ``soak``: a steady rate (default 4 requests/s, each a new session) for some minutes, with the
  server's memory (RSS) and disk (Gradio cache + temporary + data folders) at every minute and
  at the end, and their growth after the first minute (at the end, and the most at any mark);
- ``big_question``: a question of N MB (default 50) sent to ``/predict``: seconds to the answer
  or refusal, and the message;
- the server's memory and disk before and after, and whether the shipped checkpoint's files
  hash the same after the run;
- ``judged``: the figures the goals are judged on, each with whether it meets its goal.

Only loopback addresses are used. Figures depend on the machine's load: say so with them.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from ..app.registry import REPO_CHECKPOINTS
from .app_speed import result_event

HOST = "127.0.0.1"
DEFAULT_IMAGE = REPO_CHECKPOINTS / "sort-of-clevr" / "examples" / "scene_4.png"
QUESTION = "What shape is the object closest to the orange object?"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _rss_mb(pid: int) -> float:
    """Resident memory of the server and its children (job workers), in MB (Linux /proc)."""
    total = 0
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1)


def _disk_mb(folders: list[Path]) -> float:
    """Disk used (as ``du`` counts it: allocated blocks of files and folders), in MB."""
    total = 0
    for folder in folders:
        for parent, dirs, files in os.walk(folder):  # a folder swept meanwhile is skipped
            for name in dirs + files:
                try:
                    total += os.lstat(os.path.join(parent, name)).st_blocks * 512
                except OSError:
                    continue
    return round(total / 1e6, 2)


class Server:
    """The app in a subprocess (``mmdemo.ui.launch.main``) with its own folders."""

    def __init__(self, root: Path):
        self.root = root
        self.port = _free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.folders = [root / "tmp", root / "gradio", root / "data"]
        for folder in self.folders:
            folder.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "GRADIO_SERVER_PORT": str(self.port),
            "GRADIO_SERVER_NAME": HOST,
            "GRADIO_ANALYTICS_ENABLED": "False",
            "GRADIO_TEMP_DIR": str(root / "gradio"),
            "TMPDIR": str(root / "tmp"),
            "MMDEMO_DATA_DIR": str(root / "data"),
        }
        env.pop("MMDEMO_CHECKPOINT_DIR", None)
        self.log = open(root / "server.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from mmdemo.ui.launch import main; main()"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=str(REPO_CHECKPOINTS.parent),
        )

    def wait_ready(self, client: httpx.Client, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited (code {self.process.returncode}); see {self.root}/server.log")
            try:
                if client.get(f"{self.base}/gradio_api/info", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("the server did not start in time")

    def rss_mb(self) -> float:
        return _rss_mb(self.process.pid)

    def disk_mb(self) -> float:
        return _disk_mb(self.folders)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


_counter = iter(range(1 << 62))


def distinct_png(image: Path) -> bytes:
    """The image with one pixel changed: every request uploads a new file, as visitors do
    (Gradio's cache stores identical files once, which would hide its growth)."""
    with Image.open(image) as im:
        im = im.convert("RGB")
    n = next(_counter)
    im.putpixel((n % im.width, (n // im.width) % im.height), (n % 251, (n // 251) % 251, 7))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def predict(client: httpx.Client, base: str, image: Path, text: str) -> tuple[str, float, str]:
    """One /predict as the browser makes it: upload, call, read the result stream.
    Returns (outcome, seconds, detail): outcome is admitted, refused (queue full), failed
    (no answer), or answered-error (the app's own refusal)."""
    data = distinct_png(image)
    start = time.perf_counter()
    try:
        r = client.post(f"{base}/gradio_api/upload", files={"files": (image.name, data, "image/png")})
        if r.status_code == 503:
            return "refused", time.perf_counter() - start, "upload: 503"
        r.raise_for_status()
        payload = {"data": [{"path": r.json()[0], "meta": {"_type": "gradio.FileData"}}, text, None, "raw", 0.55, None]}
        r = client.post(f"{base}/gradio_api/call/predict", json=payload)
        if r.status_code == 503:
            return "refused", time.perf_counter() - start, "queue full"
        if r.status_code == 413:
            return "answered-error", time.perf_counter() - start, r.text[:300]
        if r.status_code != 200:
            return "failed", time.perf_counter() - start, f"HTTP {r.status_code}: {r.text[:200]}"
        final = result_event(client, base, r.json()["event_id"])
        seconds = time.perf_counter() - start
        if final is None:
            return "failed", seconds, "the stream ended without a result"
        event, detail = final
        if event == "complete":
            return "admitted", seconds, ""
        if "queue is full" in detail.lower():
            return "refused", seconds, detail[:200]
        return "answered-error", seconds, detail[:300]
    except httpx.HTTPError as e:
        return "failed", time.perf_counter() - start, f"{type(e).__name__}: {e}"[:200]


def _summary(results: list[tuple[str, float, str]]) -> dict:
    seconds = [s for outcome, s, _ in results if outcome == "admitted"]
    count = {k: sum(o == k for o, _, _ in results) for k in ("admitted", "refused", "failed", "answered-error")}
    errors = sorted({d for o, _, d in results if o in ("failed", "answered-error")})[:3]
    return {
        "requests": len(results),
        **count,
        "p50_s": round(float(np.percentile(seconds, 50)), 3) if seconds else None,
        "p95_s": round(float(np.percentile(seconds, 95)), 3) if seconds else None,
        **({"errors": errors} if errors else {}),
    }


def burst(server: Server, image: Path, n: int) -> dict:
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    with httpx.Client(timeout=600, limits=limits) as client:
        barrier = threading.Barrier(n)

        def one(_):
            barrier.wait()
            return predict(client, server.base, image, QUESTION)

        with cf.ThreadPoolExecutor(n) as pool:
            return _summary(list(pool.map(one, range(n))))


def soak(server: Server, image: Path, minutes: float, rate: float) -> dict:
    """Open loop: a request every 1/rate seconds, each from a new session, whatever the answers."""
    results: list[tuple[str, float, str]] = []
    marks: dict = {}
    interval = 1.0 / rate
    end = time.monotonic() + minutes * 60
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=200)) as client:
        with cf.ThreadPoolExecutor(128) as pool:
            futures = []
            next_at = time.monotonic()
            started = next_at
            while next_at < end:
                time.sleep(max(0.0, next_at - time.monotonic()))
                futures.append(pool.submit(predict, client, server.base, image, QUESTION))
                next_at += interval
                minute = int((time.monotonic() - started) // 60)
                if minute >= 1 and minute not in marks:
                    marks[minute] = {"rss_mb": server.rss_mb(), "disk_mb": server.disk_mb()}
            results = [f.result() for f in futures]
    summary = _summary(results)
    end_marks = {"rss_mb": server.rss_mb(), "disk_mb": server.disk_mb()}
    summary.update(minutes=minutes, rate_per_s=rate, per_minute=[marks[m] for m in sorted(marks)], at_end=end_marks)
    if 1 in marks:  # the judged figure: growth from the first minute's mark to the end, and at most
        first, later = marks[1], [marks[m] for m in sorted(marks) if m > 1] + [end_marks]
        summary["growth_after_1min_pct"] = {k: _growth(first[k], end_marks[k]) for k in first}
        summary["max_growth_after_1min_pct"] = {k: max(_growth(first[k], m[k]) or 0 for m in later) for k in first}
    return summary


def _growth(first: float, last: float) -> float | None:
    return round(100 * (last - first) / first, 1) if first else None


def big_question(server: Server, image: Path, megabytes: float) -> dict:
    text = "what shape is it " * int(megabytes * 1e6 / 17)
    with httpx.Client(timeout=600) as client:
        outcome, seconds, detail = predict(client, server.base, image, text)
    return {"mb": megabytes, "outcome": outcome, "seconds": round(seconds, 3), "detail": detail[:200]}


def run(
    image: Path = DEFAULT_IMAGE,
    burst_n: int = 100,
    soak_minutes: float = 1.0,
    rate: float = 4.0,
    question_mb: float = 50.0,
) -> dict:
    shipped = REPO_CHECKPOINTS / "sort-of-clevr"
    hash_before = folder_hash(shipped)
    root = Path(tempfile.mkdtemp(prefix="mmdemo-stress-"))
    server = Server(root)
    figures: dict = {"cpu_count": os.cpu_count(), "load_avg_before": os.getloadavg()[0]}
    try:
        with httpx.Client(timeout=300) as client:
            server.wait_ready(client)
            started = time.monotonic()
            warm = predict(client, server.base, image, QUESTION)  # loads the model
            figures["first_answer_s"] = round(time.monotonic() - started, 2)
            if warm[0] != "admitted":
                raise RuntimeError(f"warm-up predict: {warm}")
        figures["before"] = {"rss_mb": server.rss_mb(), "disk_mb": server.disk_mb()}
        if question_mb:
            figures["big_question"] = big_question(server, image, question_mb)
        if burst_n:
            figures["burst"] = burst(server, image, burst_n)
        if soak_minutes:
            figures["soak"] = soak(server, image, soak_minutes, rate)
        figures["after"] = {"rss_mb": server.rss_mb(), "disk_mb": server.disk_mb()}
        figures["server_alive"] = server.process.poll() is None
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    figures["load_avg_after"] = os.getloadavg()[0]
    figures["shipped_hash_unchanged"] = folder_hash(shipped) == hash_before
    figures["judged"] = judged(figures)
    return figures


def judged(figures: dict) -> dict:
    """The figures the shared-server goals are judged on, each with whether it meets its goal:
    a burst gets only "queue full" refusals; memory and disk grow at most 10 % after the soak's
    first minute; the huge question is answered or refused within 1 s; the shipped checkpoint
    is unchanged."""
    out: dict = {"shipped_hash_unchanged": figures["shipped_hash_unchanged"]}
    if "burst" in figures:
        b = figures["burst"]
        out["burst"] = (
            f"{b['admitted']} admitted / {b['refused']} queue full / {b['failed'] + b['answered-error']} other"
        )
        out["burst_ok"] = b["failed"] == 0 and b["answered-error"] == 0
    growth = figures.get("soak", {}).get("max_growth_after_1min_pct")
    if growth:
        out["memory_growth_after_1min_pct"] = growth["rss_mb"]
        out["disk_growth_after_1min_pct"] = growth["disk_mb"]
        out["soak_minutes"] = figures["soak"]["minutes"]
        out["soak_failed"] = figures["soak"]["failed"]
        out["flat_ok"] = all(v is not None and v <= 10 for v in growth.values()) and figures["soak"]["failed"] == 0
    if "big_question" in figures:
        q = figures["big_question"]
        out["big_question_s"] = q["seconds"]
        out["big_question_ok"] = q["outcome"] in ("admitted", "answered-error") and q["seconds"] <= 1
    return out
