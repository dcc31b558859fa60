"""The serving graph and the engines that run it: one forward answers every question a
request asks (the answer, its explanation, what each modality contributes).

``ServingGraph`` encodes each distinct image and each distinct text once, then lets any
number of rows read them: a row names its image (or "no image"), its text, and whether its
text is masked out. ``/predict`` asks three rows about one (image, text) pair (both, image
only, text only) for the price of one encoder pass.

Engines run the graph:
- ``TorchEngine``: PyTorch eager (CUDA, with autocast; or CPU when ONNX Runtime is missing);
- ``OnnxEngine``: the graph exported to ONNX in memory and run by ONNX Runtime. On a CPU
  it is the fastest path measured (``python -m mmdemo bench --compare`` times it against eager,
  torch.jit freezing, int8 dynamic quantisation and torch.compile; figures in docs/benchmarks.md), and its
  outputs agree with eager to ~1e-6 (tests/inference/test_inference.py).
"""

from __future__ import annotations

import io
import os
import threading
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..device import autocast
from ..model.classifier import ModelOutput, MultimodalClassifier
from .export import output_names, to_onnx
from .scope import pooled_image, pooled_text

BACKENDS = ("auto", "onnxruntime", "torch")


class Rows(NamedTuple):
    """What a forward is asked: distinct inputs, then rows that read them."""

    pixels: torch.Tensor  # (U, 3, S, S) distinct images
    input_ids: torch.Tensor  # (V, T) distinct texts
    attention_mask: torch.Tensor  # (V, T)
    image_index: torch.Tensor  # (B,) image of each row; U means "no image"
    text_index: torch.Tensor  # (B,) text of each row
    drop_text: torch.Tensor  # (B,) bool: the row's text is masked out (image only)

    @classmethod
    def plain(cls, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Rows:
        """One row per (image, text) pair."""
        b, device = input_ids.shape[0], input_ids.device
        index = torch.arange(b, device=device)
        return cls(pixels, input_ids, attention_mask, index, index, torch.zeros(b, dtype=torch.bool, device=device))

    @classmethod
    def with_modalities(cls, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Rows:
        """3N rows for N pairs: both modalities (rows 0..N-1), image only (N..2N-1), text only."""
        n, device = input_ids.shape[0], input_ids.device
        index = torch.arange(n, device=device)
        no_image = torch.full((n,), n, dtype=torch.long, device=device)
        drop = torch.zeros(3 * n, dtype=torch.bool, device=device)
        drop[n : 2 * n] = True
        return cls(pixels, input_ids, attention_mask, torch.cat([index, index, no_image]), index.repeat(3), drop)


class Served(NamedTuple):
    """An engine's answer: the rows' output, and the pooled encoder features of the distinct
    inputs (what the out-of-scope check reads, inference/scope.py)."""

    output: ModelOutput
    image_features: torch.Tensor  # (U, 2C) per distinct image: mean and spread over regions (scope.pooled_image)
    text_features: torch.Tensor  # (V, E) per distinct text


class ServingGraph(nn.Module):
    """Rows -> logits (B, L), cross attention and text attention per layer (as ``ModelOutput``),
    then the pooled image (U, 2C) and text (V, E) features.

    Inference only: the "missing image" regions do not depend on the input, so they are
    computed once here and stored as a constant.
    """

    def __init__(self, model: MultimodalClassifier):
        super().__init__()
        self.model = model.eval()
        config = model.config
        g, s = config.grid_size, config.image_size
        no_maps = torch.zeros(0, model.image_encoder.out_channels, g, g)
        no_pixels = torch.zeros(0, 3, s, s)
        param = next(model.fusion.parameters())
        with torch.no_grad():
            missing = model.fusion.encode_regions(no_maps.to(param), no_pixels.to(param), missing=True)  # (1, R, D)
        self.register_buffer("missing_regions", missing, persistent=False)
        self.eval()

    def forward(
        self,
        pixels: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_index: torch.Tensor,
        text_index: torch.Tensor,
        drop_text: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        model = self.model
        feature_map = model.encode_image(pixels)  # (U, C, h, w)
        text_states = model.encode_text(input_ids, attention_mask)  # (V, T, E)
        regions = model.fusion.encode_regions(feature_map, pixels, missing=False)  # (U, R, D)
        regions = torch.cat([regions, self.missing_regions.to(regions.dtype)])[image_index]  # (B, R, D)
        summary, cross, text_self = model.fusion.read(
            regions, text_states[text_index], attention_mask[text_index], drop_text
        )
        pooled = pooled_image(feature_map), pooled_text(text_states, attention_mask)
        extra = tuple(head(summary) for head in model.heads()[1:])  # further tasks' logits
        return (model.head(summary), *cross, *text_self, *extra, *pooled)


def _output(outputs: list[torch.Tensor], layers: int, grid: tuple[int, int]) -> Served:
    attention = outputs[1 : 1 + 2 * layers]
    extra = tuple(outputs[1 + 2 * layers : -2])
    output = ModelOutput(outputs[0], tuple(attention[:layers]), tuple(attention[layers:]), grid, extra)
    return Served(output, outputs[-2], outputs[-1])


class TorchEngine:
    """The serving graph in PyTorch eager mode."""

    name = "torch"

    def __init__(self, model: MultimodalClassifier, device: torch.device, dtype: str | None = None):
        self.graph = ServingGraph(model).to(device)
        self.device, self.dtype = device, dtype
        self.layers = model.config.fusion_layers
        self.grid = (model.config.grid_size, model.config.grid_size)

    @torch.inference_mode()
    def __call__(self, rows: Rows) -> Served:
        with autocast(self.device, self.dtype):
            outputs = self.graph(*rows)
        return _output([o.float() for o in outputs], self.layers, self.grid)


# How long ONNX Runtime's idle threads spin before they sleep, in microseconds. A forward is a few
# hundred operations, each split over the threads; a thread that sleeps between two of them
# pays a wake-up each time, so some spinning makes a quiet machine's forward faster. ONNX
# Runtime's default spin lasts some 25 ms after every run, and the request's own work after the
# forward (pictures, charts, Gradio) and the other processes of a shared machine then wait for
# that core, several times slower under load. Bounded to 200 us, a run leaves at most 0.2 ms of
# spinning behind. ``python -m mmdemo bench --compare`` times the choices; docs/benchmarks.md.
SPIN_US = 200


class OnnxEngine:
    """The serving graph exported to ONNX (in memory) and run by ONNX Runtime on the CPU."""

    name = "onnxruntime"

    def __init__(self, model: MultimodalClassifier, threads: int | None = None, spin_us: int | None = SPIN_US):
        """``threads``: ONNX Runtime's intra-op threads (None: one per physical core);
        ``spin_us``: how long an idle thread spins before it sleeps (0: never spins; None:
        ONNX Runtime's default, for ``bench --compare``; see SPIN_US)."""
        import onnxruntime as ort

        config = model.config
        self.layers = config.fusion_layers
        self.grid = (config.grid_size, config.grid_size)
        buffer = io.BytesIO()
        export_serving_graph(model, buffer)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # its own thread pool, not torch's setting: a serving process keeps torch at one thread
        # (torch_threads_for_serving)
        options.intra_op_num_threads = threads or _threads_per_process()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0" if spin_us == 0 else "1")
        if spin_us:
            options.add_session_config_entry("session.intra_op.spin_duration_us", str(spin_us))
        options.log_severity_level = 3  # no warnings about shape inference on the dynamic axes
        self.session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        self.onnx_bytes = len(buffer.getvalue())

    def __call__(self, rows: Rows) -> Served:
        feed = {name: np.ascontiguousarray(value.cpu().numpy()) for name, value in zip(Rows._fields, rows)}
        outputs = self.session.run(None, feed)
        return _output([torch.from_numpy(o) for o in outputs], self.layers, self.grid)


def _threads_per_process() -> int:
    """ONNX Runtime's threads when none are asked for: 0 (its own choice, one per physical core)
    for a process alone; under torchrun, this machine's cores shared among its processes
    (spinning threads of several processes contending for the same cores slow them all)."""
    from ..device import cores_per_process, env_local_world_size

    local = env_local_world_size()
    return 0 if local <= 1 else cores_per_process(local)


def export_serving_graph(model: MultimodalClassifier, target) -> None:
    """The serving graph as ONNX, written to a path or a BytesIO; every row count is dynamic."""
    names = [*output_names(model.config), "image_features", "text_features"]
    to_onnx(
        ServingGraph(model).cpu(),
        tuple(example_rows(model)),
        target,
        list(Rows._fields),
        names,
        {
            "pixels": {0: "images"},
            "input_ids": {0: "texts", 1: "tokens"},
            "attention_mask": {0: "texts", 1: "tokens"},
            "image_index": {0: "rows"},
            "text_index": {0: "rows"},
            "drop_text": {0: "rows"},
            **{name: {0: "rows"} for name in names[:-2]},
            "image_features": {0: "images"},
            "text_features": {0: "texts"},
        },
    )


def example_rows(model: MultimodalClassifier, images: int = 1, tokens: int = 8) -> Rows:
    """Rows of the right shapes (values do not matter) to trace the graph with."""
    s = model.config.image_size
    ids = torch.full((images, tokens), 101, dtype=torch.long)
    return Rows.with_modalities(torch.zeros(images, 3, s, s), ids, torch.ones_like(ids))


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """``auto`` (or $MMDEMO_BACKEND): ONNX Runtime on the CPU when installed, else PyTorch."""
    backend = backend or os.environ.get("MMDEMO_BACKEND") or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "onnxruntime" if device.type == "cpu" and onnxruntime_available() else "torch"
    if backend == "onnxruntime" and device.type != "cpu":
        raise ValueError("the onnxruntime backend runs on the CPU; use --backend torch on a GPU")
    return backend


def torch_threads_for_serving(device: torch.device, backend: str | None = None) -> int | None:
    """Threads for torch's own work in a process that serves predictions (the app): 1 when
    ONNX Runtime (its own thread pool) or a GPU runs the model, None (leave it) when PyTorch
    runs it on the CPU. What is left to torch per request (preprocessing, explanation maths,
    upsampling heatmaps) is many small operations, which a second OpenMP thread made slower, not
    faster, the more so beside ONNX Runtime's threads (``python -m mmdemo bench-app --stages``)."""
    if device.type != "cpu" or resolve_backend(backend, device) == "onnxruntime":
        return 1
    return None


def make_engine(
    model: MultimodalClassifier, device: torch.device, backend: str | None = None, dtype: str | None = None
):
    """The engine that serves ``model``; ``dtype`` is the autocast type on a GPU (None: the best)."""
    if resolve_backend(backend, device) == "onnxruntime":
        return OnnxEngine(model)
    return TorchEngine(model, device, dtype)


class MicroBatcher:
    """Runs requests that arrive together as one batch, without a thread of its own.

    Callers block in ``__call__``; whoever finds the engine idle takes up to ``max_batch``
    waiting requests with the same key and runs ``run_batch(items)`` for all of them, then
    wakes the others. One caller alone runs at once (no added wait); under load, requests
    queue for at most one batch and share its forward.
    """

    def __init__(self, run_batch, max_batch: int = 8):
        self.run_batch = run_batch
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._pending: list[_Slot] = []
        self._busy = False

    def __call__(self, item, key=None):
        slot = _Slot(item, key)
        with self._cond:
            self._pending.append(slot)
        while True:
            with self._cond:
                while self._busy and not slot.done:
                    self._cond.wait()
                if slot.done:
                    break
                first = self._pending[0]  # our own slot at least is still pending
                batch = [s for s in self._pending if s.key == first.key][: self.max_batch]
                self._pending = [s for s in self._pending if s not in batch]
                self._busy = True
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _run(self, batch: list[_Slot]) -> None:
        try:
            results = self.run_batch([s.item for s in batch], batch[0].key)
            for slot, result in zip(batch, results):
                slot.result = result
        except Exception as e:
            if len(batch) == 1:
                batch[0].error = e
            else:  # one bad request must not fail the others: run each alone
                for slot in batch:
                    try:
                        slot.result = self.run_batch([slot.item], slot.key)[0]
                    except Exception as e1:
                        slot.error = e1
        for slot in batch:
            slot.done = True


class _Slot:
    __slots__ = ("item", "key", "result", "error", "done")

    def __init__(self, item, key):
        self.item, self.key = item, key
        self.result, self.error, self.done = None, None, False
