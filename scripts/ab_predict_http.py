"""Before/after /predict over HTTP, interleaved: one `python app.py` per tree, the same varied
scenes asked of each in turn (rounds x calls), so the machine's load hits both alike.

    python scripts/ab_predict_http.py '{"before": {"CWD": "/tmp/old-tree"}, "after": {}}' 8 6

Each entry: a name and extra environment variables for its server (CWD: the tree to run; default
this one). Prints HTTP p50 / p95 per server and Gradio's own phases (GRADIO_PROFILING=1).
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mmdemo.benchmarks.app_speed import _free_port, http_predict, varied_inputs  # noqa: E402

configs = json.loads(sys.argv[1])
rounds, per_round = int(sys.argv[2]), int(sys.argv[3])
pairs = varied_inputs(Path(tempfile.mkdtemp(prefix="ab-predict-")))
servers = {}
for name, extra in configs.items():
    port = _free_port()
    env = {
        **os.environ,
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_PROFILING": "1",
        **extra,
    }
    command = [sys.executable, "app.py"]
    process = subprocess.Popen(
        command, cwd=extra.get("CWD", os.getcwd()), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    servers[name] = (process, f"http://127.0.0.1:{port}")
times = {name: [] for name in configs}
try:
    with httpx.Client(timeout=60) as client:
        for _process, base in servers.values():
            started = time.time()
            while True:  # up, model loaded, one answer back
                try:
                    http_predict(client, base, *pairs[0])
                    break
                except Exception:
                    if time.time() - started > 300:
                        raise
                    time.sleep(0.2)
            for i in range(5):  # warm-up
                http_predict(client, base, *pairs[i])
            client.post(f"{base}/gradio_api/profiling/clear")
        k = 0
        for _ in range(rounds):
            for name, (_, base) in servers.items():
                for j in range(per_round):
                    image, text = pairs[(k + j) % len(pairs)]
                    start = time.perf_counter()
                    http_predict(client, base, image, text)
                    times[name].append((time.perf_counter() - start) * 1000)
            k += per_round
        for name, (_, base) in servers.items():
            phases = client.get(f"{base}/gradio_api/profiling/summary").json()["phases"]
            print(
                json.dumps(
                    {
                        "server": name,
                        "http_p50_ms": round(float(np.percentile(times[name], 50)), 1),
                        "http_p95_ms": round(float(np.percentile(times[name], 95)), 1),
                        "gradio_phases_ms_p50": {p: round(v["p50"], 1) for p, v in phases.items() if v["p50"]},
                        "load_average": round(os.getloadavg()[0], 2),
                    }
                )
            )
finally:
    for process, _ in servers.values():
        process.terminate()
