"""App speed (``python -m mmdemo bench-app``): start-up to the first answer, /predict over HTTP
the way the browser makes it (upload the image, call, read the result stream, fetch the overlay
image), on varied Sort-of-CLEVR scenes and questions, p50 and p95; a concurrency table (1, 4, 16
clients at once: latency and answers per second); a burst larger than the queue, to show that
requests past the limit get a clear "queue full" answer instead of waiting without bound; and
gradio_client's figure beside them. The server runs with Gradio's own profiling on
(GRADIO_PROFILING=1), so the sequential calls are also split into Gradio's phases (queue wait,
preprocess, the handler, postprocess) and what is left is HTTP and the result stream; the
handler's own stages are ``bench-app --stages`` (mmdemo/benchmarks/stages.py).

Starts ``python app.py`` in a subprocess on a free loopback port.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
QUEUE_SIZE = 64  # app.py's default queue bound ($MMDEMO_QUEUE_SIZE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def varied_inputs(folder: Path, scenes: int = 24, seed: int = 5) -> list[tuple[Path, str]]:
    """Fresh scenes (PNG files) with one question each, cycling through every question type."""
    from ..datasets.sortofclevr import PHRASINGS, questions, random_scene, render

    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(scenes):
        scene = random_scene(rng)
        path = folder / f"scene_{i}.png"
        render(scene).save(path)
        asked = questions(scene, rng, PHRASINGS, per_kind=1)
        pairs.append((path, asked[i % len(asked)]["text"]))
    return pairs


def upload(client: httpx.Client, base: str, image: Path) -> str:
    with open(image, "rb") as f:
        return client.post(f"{base}/gradio_api/upload", files={"files": (image.name, f, "image/png")}).json()[0]


def start_call(client: httpx.Client, base: str, path: str, text: str) -> httpx.Response:
    # every input, as the browser sends them: image, text, checkpoint, method, opacity, owner token
    image = {"path": path, "meta": {"_type": "gradio.FileData"}}
    payload = {"data": [image, text, "sort-of-clevr", "raw", 0.55, None]}
    return client.post(f"{base}/gradio_api/call/predict", json=payload)


def result_event(client: httpx.Client, base: str, event_id: str) -> tuple[str, str] | None:
    """The call's final event from its result stream: ("complete" or "error", its data), or
    None when the stream ended without one."""
    event = None
    with client.stream("GET", f"{base}/gradio_api/call/predict/{event_id}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                return event, line[5:].strip()
    return None


def read_result(client: httpx.Client, base: str, event_id: str) -> list:
    final = result_event(client, base, event_id)
    if final is None:
        raise RuntimeError("the result stream ended without a result")
    event, data = final
    if event == "error":
        raise RuntimeError(f"predict failed: data: {data}")
    return json.loads(data)


def http_predict(client: httpx.Client, base: str, image: Path, text: str) -> dict:
    """Upload + call + read the stream + fetch the overlay, as the browser does; returns the
    first output (the label)."""
    response = start_call(client, base, upload(client, base, image), text)
    response.raise_for_status()
    outputs = read_result(client, base, response.json()["event_id"])
    overlay = outputs[2]
    if overlay.get("__type__") == "update":  # the overlay comes with its label ("... for “word”")
        overlay = overlay["value"]
    client.get(overlay["url"]).raise_for_status()
    return outputs[0]


def _sequential(base: str, pairs, repeats: int) -> list[float]:
    times = []
    with httpx.Client(timeout=60) as client:
        for i in range(repeats):
            image, text = pairs[i % len(pairs)]
            t = time.perf_counter()
            http_predict(client, base, image, text)
            times.append((time.perf_counter() - t) * 1000)
    return times


def _concurrent(base: str, pairs, clients: int, per_client: int) -> dict:
    """``clients`` threads, each a browser making ``per_client`` requests back to back."""
    times: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client_loop(k: int) -> None:
        with httpx.Client(timeout=120) as client:
            for j in range(per_client):
                image, text = pairs[(k * per_client + j) % len(pairs)]
                t = time.perf_counter()
                try:
                    http_predict(client, base, image, text)
                except (httpx.HTTPError, RuntimeError) as e:
                    with lock:
                        failures.append(f"{type(e).__name__}: {str(e)[:300]}")
                    continue
                with lock:
                    times.append((time.perf_counter() - t) * 1000)

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {
        "clients": clients,
        "requests": clients * per_client,
        "p50_ms": round(float(np.percentile(times, 50)), 1) if times else None,
        "p95_ms": round(float(np.percentile(times, 95)), 1) if times else None,
        "answers_per_s": round(len(times) / wall, 2),
        "failed": len(failures),
        "first_failure": failures[0] if failures else None,
    }


def _burst(base: str, pairs, calls: int) -> dict:
    """``calls`` /predict calls posted at once (the image uploaded beforehand): those past the
    queue's bound must be refused at once with "Queue is full", the others answered."""
    with httpx.Client(timeout=60) as client:
        path = upload(client, base, pairs[0][0])
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()
    go = threading.Event()

    def call(i: int) -> None:
        with httpx.Client(timeout=300) as client:
            go.wait()
            response = start_call(client, base, path, pairs[i % len(pairs)][1])
            if response.status_code == 200:
                read_result(client, base, response.json()["event_id"])
            with lock:
                answers.append((response.status_code, response.text[:200]))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(calls)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    refused = [text for status, text in answers if status == 503]
    return {
        "calls": calls,
        "answered": sum(1 for status, _ in answers if status == 200),
        "refused_queue_full": len(refused),
        "refusal_message": json.loads(refused[0])["detail"] if refused else None,
        "seconds": round(time.perf_counter() - start, 1),
    }


def run(
    image: Path | None = None, text: str | None = None, repeats: int = 50, clients: list[int] | None = None
) -> dict:
    """``image``/``text`` given: the start-up request uses them (the rest are varied scenes)."""
    clients = [1, 4, 16] if clients is None else clients
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_PROFILING": "1",  # Gradio's phase timings at /gradio_api/profiling/summary
    }
    queue_size = int(env.get("MMDEMO_QUEUE_SIZE", QUEUE_SIZE))
    folder = Path(tempfile.mkdtemp(prefix="bench-app-"))
    pairs = varied_inputs(folder)
    first_image, first_text = image or pairs[0][0], text or pairs[0][1]
    start = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        with httpx.Client(timeout=60) as client:
            while True:  # first answer: server up, model loaded, one prediction back
                try:
                    first = http_predict(client, base, first_image, first_text)
                    break
                except (httpx.TransportError, httpx.HTTPStatusError, RuntimeError, KeyError, json.JSONDecodeError):
                    if server.poll() is not None:
                        raise RuntimeError("app.py exited during start-up") from None
                    if time.perf_counter() - start > 120:
                        raise
                    time.sleep(0.05)
        startup_s = time.perf_counter() - start
        _sequential(base, pairs, 3)  # warm-up
        with httpx.Client(timeout=60) as client:
            client.post(f"{base}/gradio_api/profiling/clear").raise_for_status()
            times = _sequential(base, pairs, repeats)
            phases = client.get(f"{base}/gradio_api/profiling/summary").json()["phases"]
        table = [_concurrent(base, pairs, c, per_client=max(3, 48 // c)) for c in clients]
        burst = _burst(base, pairs, queue_size + 40)
        from gradio_client import Client, handle_file

        gc = Client(base, verbose=False)
        client_times = []
        for i in range(max(5, repeats // 5)):
            t = time.perf_counter()
            gc.predict(handle_file(str(pairs[i % len(pairs)][0])), pairs[i % len(pairs)][1], api_name="/predict")
            client_times.append((time.perf_counter() - t) * 1000)
    finally:
        server.terminate()
        server.wait(10)
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    return {
        "startup_to_first_answer_s": round(startup_s, 2),
        "first_label": first.get("label"),
        "http_predict_ms_p50": round(float(np.percentile(times, 50)), 1),
        "http_predict_ms_p95": round(float(np.percentile(times, 95)), 1),
        # the same sequential calls in the server, p50 per phase (fn_call: the handler)
        "gradio_phases_ms_p50": {name: round(p["p50"], 1) for name, p in phases.items() if p["p50"]},
        "repeats": repeats,
        "varied_scenes": len(pairs),
        "concurrency": table,
        "queue_size": queue_size,
        "burst": burst,
        "gradio_client_predict_ms_p50": round(float(np.percentile(client_times, 50)), 1),
        "load_average": round(os.getloadavg()[0], 2),
    }
