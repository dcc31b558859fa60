"""Speed figures for one checkpoint on this machine (``python -m mmdemo bench``).

forward_ms_*: batch 1, an image and a ~15-token question, preprocessing excluded, through the
path the Predictor serves with (``path``), with torch at the thread count the app gives it
(``torch_threads``: 1 beside ONNX Runtime, inference.torch_threads_for_serving); then PyTorch
eager on the same model at torch's default thread count (``eager_forward_ms_p50``), in a block
of its own: interleaving them let eager's OpenMP threads, still spinning after each call, take
the cores from the next ONNX Runtime call.
analyse_ms_p50: what /predict asks of the model: preprocessing, the answer, its explanation and
the modality contributions (one encoder pass). throughput_bs32: samples per second at batch 32.
matmul_gflops: a 1024x1024 fp32 matmul here, to set the model's cost against the machine.
model_gflops: floating-point operations of one batch-1 forward (2 per multiply-add), as run:
the "missing image" regions (one more image through the region layers) are only computed for
rows that drop the image, so they are not counted.
model_params_m: parameters (millions).
load_average: the machine's 1-minute load when the figures were taken (others' work inflates them).

``--compare`` also times the candidate fast paths, round-robin in the same run: ONNX Runtime
with 2 threads spinning briefly (served) or never, with 1 thread, ONNX Runtime with int8
dynamic quantisation of its MatMuls, PyTorch with int8 dynamic quantisation of the linear
layers, torch.jit trace + freeze (and torch.compile with ``--compile``: minutes of compilation
on a CPU); each with its set-up time and its agreement with eager (max abs probability
difference on the bench input). ONNX Runtime with its threads spinning between calls (its
default) is timed alone after them: its spinning threads would slow the candidate timed next. The int8 candidate also gets the agreement test a path must pass to be
served: the same answer as eager on ``AGREEMENT_INPUTS`` fixed inputs and a largest probability
difference of at most ``MAX_PROB_DIFF`` (ONNX Runtime's int8).
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

from ..device import autocast
from ..inference.engines import SPIN_US, OnnxEngine, Rows, ServingGraph, export_serving_graph, torch_threads_for_serving
from ..inference.predictor import Predictor

QUESTION = "What shape is the object that is closest to the small red object in the picture?"
AGREEMENT_INPUTS, MAX_PROB_DIFF = 200, 0.01
AGREEMENT_QUESTIONS = [
    "What shape is the red object?",
    "Is the blue object on the left or on the right?",
    "How many objects have the same shape as the green object?",
    "What shape is the object that is furthest from the gray object?",
    "Is the yellow object at the top or at the bottom?",
]


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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

    serving_threads = torch_threads_for_serving(device, predictor.backend)
    with _torch_threads(serving_threads):
        threads = torch.get_num_threads()
        times = {"served": _timed(served, device, repeats)}
        _, pixels32, ids32, mask32 = _inputs(predictor, 32)
        batch_times = _timed(lambda: served(pixels32, ids32, mask32), device, max(5, repeats // 10), warmup=2)
        analyse_times = _timed(lambda: predictor.analyse_batch([image], [QUESTION]), device, max(5, repeats // 4), 2)
    times["eager"] = _timed(eager, device, repeats)
    with FlopCounterMode(display=False) as counter:
        eager()
    result = {
        "device": str(device),
        "path": _path(predictor),
        "torch_threads": threads,
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
        return f"onnxruntime (conv+BN folded, graph optimisations on, idle threads spin {SPIN_US} us, then sleep)"
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
    runs, notes = {"torch eager": lambda r: graph(*r)}, {"torch eager": {}}

    def add(name: str, build, agreement_test: bool = False):
        """``build()`` returns a function of Rows whose first output is the logits."""
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                run = build()
                probs = torch.as_tensor(np.asarray(run(rows)[0])).softmax(-1)
        except Exception as e:  # a candidate that does not build here is reported, not fatal
            notes[name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            return
        runs[name] = run
        notes[name] = {
            "setup_s": round(time.perf_counter() - start, 2),
            "max_prob_diff": float(f"{(probs - reference).abs().max().item():.2e}"),
        }
        if agreement_test:
            notes[name]["agreement"] = agreement(run, graph, predictor)

    def onnx(threads: int, int8: bool = False, spin_us: int | None = SPIN_US):
        def build():
            if int8:
                return _quantized_onnx(model, threads)
            engine = OnnxEngine(model, threads=threads, spin_us=spin_us)
            return lambda r: engine(r).output

        return build

    add(f"onnxruntime, 2 threads, spinning {SPIN_US} us (served)", onnx(2))
    add("onnxruntime, 2 threads, never spinning", onnx(2, spin_us=0))
    add("onnxruntime, 1 thread", onnx(1))
    add("onnxruntime + int8 dynamic (MatMul)", onnx(2, int8=True), agreement_test=True)

    def int8_torch():
        q = ServingGraph(torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}))
        return lambda r: q(*r)

    def jit_freeze():
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(graph, tuple(rows), strict=False)))
        return lambda r: frozen(*r)

    def compiled():
        fn = torch.compile(graph, dynamic=False)
        return lambda r: fn(*r)

    add("torch int8 dynamic (Linear)", int8_torch)
    add("torch.jit trace + freeze", jit_freeze)
    if compile:  # minutes of C++ compilation on a CPU: only when asked
        add("torch.compile (inductor)", compiled)
    fns = {name: (lambda run=run: run(rows)) for name, run in runs.items()}
    with torch.inference_mode():
        times = _interleaved(fns, torch.device("cpu"), repeats, warmup=3)
    for name, t in times.items():
        notes[name]["forward_ms_p50"] = _p(t, 50)
    # alone, last: between calls its threads spin on the cores the next candidate would need
    name = "onnxruntime, 2 threads spinning between calls (ONNX Runtime's default)"
    add(name, onnx(2, spin_us=None))
    if name in runs:
        notes[name]["forward_ms_p50"] = _p(_timed(lambda: runs[name](rows), torch.device("cpu"), repeats, 3), 50)
    return notes


@torch.inference_mode()
def agreement(run, graph: ServingGraph, predictor: Predictor, inputs: int = AGREEMENT_INPUTS, batch: int = 20) -> dict:
    """A candidate path against eager on ``inputs`` fixed inputs (fresh Sort-of-CLEVR scenes,
    seed 1, with questions of every kind): how many answers are the same, the largest
    probability difference, and whether it passes (every answer the same, difference at most
    MAX_PROB_DIFF)."""
    from ..datasets.sortofclevr import random_scene
    from ..datasets.sortofclevr import render as draw_scene

    rng = np.random.default_rng(1)
    same, worst = 0, 0.0
    for start in range(0, inputs, batch):
        k = min(batch, inputs - start)
        images = [draw_scene(random_scene(rng)) for _ in range(k)]
        texts = [AGREEMENT_QUESTIONS[(start + i) % len(AGREEMENT_QUESTIONS)] for i in range(k)]
        tokens = predictor.tokens(texts)
        rows = Rows.plain(predictor.pixels(images).cpu(), tokens.input_ids, tokens.attention_mask)
        expected = graph(*rows)[0].float().softmax(-1)
        got = torch.as_tensor(np.asarray(run(rows)[0])).float().softmax(-1)
        same += int((got.argmax(-1) == expected.argmax(-1)).sum())
        worst = max(worst, float((got - expected).abs().max()))
    return {
        "inputs": inputs,
        "same_answer": same,
        "max_prob_diff": round(worst, 4),
        "passes": same == inputs and worst <= MAX_PROB_DIFF,
    }


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
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")  # as the served engine
        options.add_session_config_entry("session.intra_op.spin_duration_us", str(SPIN_US))
        options.log_severity_level = 3
        session = ort.InferenceSession(str(quantized), options, providers=["CPUExecutionProvider"])

    def run(rows):
        feed = {n: np.ascontiguousarray(v.numpy()) for n, v in zip(Rows._fields, rows)}
        return [session.run(None, feed)[0]]

    return run
