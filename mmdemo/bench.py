"""Speed figures for one checkpoint on this machine (``python -m mmdemo bench``).

forward_ms_*: batch 1, an image and a ~15-token question, preprocessing excluded, in
inference mode (no explanation). throughput_bs32: samples per second at batch 32.
matmul_gflops: a 1024x1024 fp32 matmul here, to set the model's cost against the machine.
model_gflops: floating-point operations of one batch-1 forward (2 per multiply-add).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from .device import autocast
from .service import Predictor

QUESTION = "What shape is the object that is closest to the small red object in the picture?"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device, repeats: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return times


def matmul_gflops(device: torch.device, n: int = 1024) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    ms = float(np.median(_timed(lambda: a @ b, device, repeats=20)))
    return 2 * n**3 / (ms / 1000) / 1e9


@torch.inference_mode()
def run(predictor: Predictor, repeats: int = 100) -> dict:
    device, model = predictor.device, predictor.model
    size = predictor.config.image_size
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    pixels = predictor.pixels([image])
    tokens = predictor.tokens([QUESTION])
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)

    def forward(p=pixels, i=ids, m=mask):
        with autocast(device):
            return model(p, i, m)

    times = _timed(forward, device, repeats)
    pixels32 = pixels.expand(32, -1, -1, -1).contiguous(memory_format=torch.channels_last)
    ids32, mask32 = ids.expand(32, -1).contiguous(), mask.expand(32, -1).contiguous()
    batch_times = _timed(lambda: forward(pixels32, ids32, mask32), device, repeats=max(5, repeats // 10), warmup=2)
    with FlopCounterMode(display=False) as counter:
        forward()
    return {
        "device": str(device),
        "tokens": int(mask.sum()),
        "image_size": size,
        "forward_ms_p50": round(float(np.percentile(times, 50)), 2),
        "forward_ms_p95": round(float(np.percentile(times, 95)), 2),
        "throughput_bs32": round(32 / (float(np.median(batch_times)) / 1000), 1),
        "matmul_gflops": round(matmul_gflops(device), 1),
        "model_gflops": round(counter.get_total_flops() / 1e9, 3),
    }
