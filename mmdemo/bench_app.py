"""App speed (``python -m mmdemo bench-app``): start-up to the first answer, and /predict over
HTTP the way the browser makes it (upload the image, call, read the result stream), with
gradio_client's figure beside it.

Starts ``python app.py`` in a subprocess on a free loopback port.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_predict(client: httpx.Client, base: str, image: Path, text: str) -> dict:
    """Upload + call + read the stream, as the browser does; returns the first output."""
    with open(image, "rb") as f:
        uploaded = client.post(f"{base}/gradio_api/upload", files={"files": (image.name, f, "image/png")}).json()
    # every input, as the browser sends them: image, text, checkpoint, method, opacity, owner token
    payload = {
        "data": [{"path": uploaded[0], "meta": {"_type": "gradio.FileData"}}, text, "sort-of-clevr", "raw", 0.55, None]
    }
    event_id = client.post(f"{base}/gradio_api/call/predict", json=payload).json()["event_id"]
    event = None
    with client.stream("GET", f"{base}/gradio_api/call/predict/{event_id}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                if event == "error":
                    raise RuntimeError(f"predict failed: {line}")
                return json.loads(line[5:])[0]
    raise RuntimeError("the result stream ended without a result")


def run(image: Path, text: str, repeats: int = 50) -> dict:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    start = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        with httpx.Client(timeout=60) as client:
            while True:  # first answer: server up, model loaded, one prediction back
                try:
                    first = http_predict(client, base, image, text)
                    break
                except (httpx.TransportError, RuntimeError, KeyError, json.JSONDecodeError):
                    if server.poll() is not None:
                        raise RuntimeError("app.py exited during start-up") from None
                    if time.perf_counter() - start > 120:
                        raise
                    time.sleep(0.1)
            startup_s = time.perf_counter() - start
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                http_predict(client, base, image, text)
                times.append((time.perf_counter() - t) * 1000)
        from gradio_client import Client, handle_file

        gc = Client(base, verbose=False)
        client_times = []
        for _ in range(max(5, repeats // 5)):
            t = time.perf_counter()
            gc.predict(handle_file(str(image)), text, api_name="/predict")
            client_times.append((time.perf_counter() - t) * 1000)
    finally:
        server.terminate()
        server.wait(10)
    return {
        "startup_to_first_answer_s": round(startup_s, 2),
        "first_label": first.get("label"),
        "http_predict_ms_p50": round(float(np.percentile(times, 50)), 1),
        "http_predict_ms_p95": round(float(np.percentile(times, 95)), 1),
        "gradio_client_predict_ms_p50": round(float(np.percentile(client_times, 50)), 1),
        "repeats": repeats,
    }
