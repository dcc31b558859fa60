"""Speed figures for one checkpoint on this machine (``python -m mmdemo bench``).

forward_ms_*: batch 1, an image and a ~15-token question, preprocessing excluded, through the
path the Predictor serves with (``path``), interleaved with PyTorch eager on the same model
(``eager_forward_ms_p50``), so their ratio holds even on a loaded machine.
analyse_ms_p50: what /predict asks of the model: preprocessing, the answer, its explanation and
the modality contributions (one encoder pass). throughput_bs32: samples per second at batch 32.
matmul_gflops: a 1024x1024 fp32 matmul here, to set the model's cost against the machine.
model_gflops: floating-point operations of one batch-1 forward (2 per multiply-add), as run
now: the "missing image" regions (1 more image through the region layers, 0.4 GFLOP at 224 px)
are only computed for rows that drop the image, so the 224 px default counts 1.54, not 1.94.
model_params_m: parameters (millions), the same as before for the same architecture.
load_average: the machine's 1-minute load when the figures were taken (others' work inflates them).

``--compare`` also times the candidate fast paths, round-robin in the same run: ONNX Runtime
with 1 and 2 threads, ONNX Runtime with int8 dynamic quantisation of its MatMuls, PyTorch with
int8 dynamic quantisation of the linear layers, torch.jit trace + freeze (and torch.compile with
``--compile``: minutes of compilation here); each with its set-up time and its agreement with
eager (max abs probability difference on the bench input).
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from .device import autocast
from .inference import OnnxEngine, Rows, ServingGraph, export_serving_graph
from .service import Predictor

QUESTION = "What shape is the object that is closest to the small red object in the picture?"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device, repeats: int, warmup: int = 5) -> list[float]:
    return _interleaved({"fn": fn}, device, repeats, warmup)["fn"]


def _interleaved(fns: dict, device: torch.device, repeats: int, warmup: int = 5) -> dict[str, list[float]]:
    """Times each function ``repeats`` times, round-robin, so a change in the machine's load
    hits every candidate alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def _p(times: list[float], q: float) -> float:
    return round(float(np.percentile(times, q)), 2)


def matmul_gflops(device: torch.device, n: int = 1024) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    ms = float(np.median(_timed(lambda: a @ b, device, repeats=20)))
    return 2 * n**3 / (ms / 1000) / 1e9


def _inputs(predictor: Predictor, batch: int = 1):
    size = predictor.config.image_size
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    pixels = predictor.pixels([image] * batch)
    tokens = predictor.tokens([QUESTION] * batch)
    return image, pixels, tokens.input_ids.to(predictor.device), tokens.attention_mask.to(predictor.device)


@torch.inference_mode()
def run(predictor: Predictor, repeats: int = 100, compare: bool = False, compile: bool = False) -> dict:
    device, model = predictor.device, predictor.model
    image, pixels, ids, mask = _inputs(predictor)

    def eager(p=pixels, i=ids, m=mask):
        with autocast(device, predictor.dtype):
            return model(p, i, m)

    def served(p=pixels, i=ids, m=mask):
        return predictor.forward(p, i, m)

    times = _interleaved({"served": served, "eager": eager}, device, repeats)
    _, pixels32, ids32, mask32 = _inputs(predictor, 32)
    batch_times = _timed(lambda: served(pixels32, ids32, mask32), device, repeats=max(5, repeats // 10), warmup=2)
    analyse_times = _timed(lambda: predictor.analyse_batch([image], [QUESTION]), device, max(5, repeats // 4), 2)
    with FlopCounterMode(display=False) as counter:
        eager()
    result = {
        "device": str(device),
        "path": _path(predictor),
        "threads": torch.get_num_threads(),
        "tokens": int(mask.sum()),
        "image_size": predictor.config.image_size,
        "forward_ms_p50": _p(times["served"], 50),
        "forward_ms_p95": _p(times["served"], 95),
        "eager_forward_ms_p50": _p(times["eager"], 50),
        "speedup_vs_eager": round(float(np.median(times["eager"]) / np.median(times["served"])), 2),
        "analyse_ms_p50": _p(analyse_times, 50),
        "throughput_bs32": round(32 / (float(np.median(batch_times)) / 1000), 1),
        "matmul_gflops": round(matmul_gflops(device), 1),
        "model_gflops": round(counter.get_total_flops() / 1e9, 3),
        "model_params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "load_average": round(os.getloadavg()[0], 2),
        "repeats": repeats,
    }
    if compare:
        result["candidates"] = compare_candidates(predictor, max(20, repeats // 2), compile)
    return result


def _path(predictor: Predictor) -> str:
    if predictor.backend == "onnxruntime":
        return "onnxruntime (conv+BN folded, graph optimisations on)"
    if predictor.device.type == "cuda":
        return f"torch eager, autocast {predictor.dtype or 'auto (bf16 where supported)'}"
    return "torch eager (conv+BN folded, channels_last)"


def compare_candidates(predictor: Predictor, repeats: int, compile: bool = False) -> dict:
    """Each candidate fast path: p50 at batch 1 (interleaved), set-up seconds, agreement."""
    _, pixels, ids, mask = _inputs(predictor)
    rows = Rows.plain(pixels.cpu(), ids.cpu(), mask.cpu())
    model = predictor.model.cpu()
    graph = ServingGraph(model)
    with torch.inference_mode():
        reference = graph(*rows)[0].softmax(-1)
    fns, notes = {"torch eager": lambda: graph(*rows)}, {"torch eager": {}}

    def add(name: str, build):
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                fn = build()
                probs = torch.as_tensor(np.asarray(fn()[0])).softmax(-1)
        except Exception as e:  # a candidate that does not build here is reported, not fatal
            notes[name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            return
        fns[name] = fn
        notes[name] = {
            "setup_s": round(time.perf_counter() - start, 2),
            "max_prob_diff": float(f"{(probs - reference).abs().max().item():.2e}"),
        }

    def onnx(threads: int, int8: bool = False):
        def build():
            if int8:
                quantized = _quantized_onnx(model, threads)
                return lambda: quantized(rows)
            engine = OnnxEngine(model, threads=threads)
            return lambda: engine(rows).output

        return build

    add("onnxruntime, 2 threads", onnx(2))
    add("onnxruntime, 1 thread", onnx(1))
    add("onnxruntime + int8 dynamic (MatMul)", onnx(2, int8=True))

    def int8_torch():
        q = ServingGraph(torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}))
        return lambda: q(*rows)

    def jit_freeze():
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(graph, tuple(rows), strict=False)))
        return lambda: frozen(*rows)

    def compiled():
        fn = torch.compile(graph, dynamic=False)
        return lambda: fn(*rows)

    add("torch int8 dynamic (Linear)", int8_torch)
    add("torch.jit trace + freeze", jit_freeze)
    if compile:  # minutes of C++ compilation on 2 busy cores: only when asked
        add("torch.compile (inductor)", compiled)
    times = _interleaved(fns, torch.device("cpu"), repeats, warmup=3)
    for name, t in times.items():
        notes[name]["forward_ms_p50"] = _p(t, 50)
    return notes


def _quantized_onnx(model, threads: int):
    """The serving graph's ONNX with int8 dynamic quantisation of its MatMul weights."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as folder:
        plain, quantized = Path(folder) / "graph.onnx", Path(folder) / "int8.onnx"
        export_serving_graph(model, plain)
        with contextlib.redirect_stdout(None):
            quantize_dynamic(plain, quantized, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        session = ort.InferenceSession(str(quantized), options, providers=["CPUExecutionProvider"])

    class Engine:
        def __call__(self, rows):
            feed = {n: np.ascontiguousarray(v.numpy()) for n, v in zip(Rows._fields, rows)}
            return [session.run(None, feed)[0]]

    return Engine()
