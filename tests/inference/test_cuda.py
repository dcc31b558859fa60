"""CUDA paths: autocast inference (bf16, fp16) agrees with fp32 on the CPU, models and batches
move between devices, a training run on the GPU, and DDP over NCCL with one process (a bare DDP
step, and the training engine under torchrun's environment).

Marked ``cuda`` and skipped without a GPU; ``scripts/gpu_check.sh`` runs them on a lent one.
"""

import copy
import os
import socket

import pytest
import torch

from mmdemo.inference.predictor import Predictor
from mmdemo.model.classifier import build_model

from ..conftest import tiny_config
from .test_inference import _random_inputs

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _tiny(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(tiny_config()).eval()


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_autocast_inference_agrees_with_cpu(dtype):
    model = _tiny()
    cpu = Predictor(copy.deepcopy(model), "cpu", backend="torch")
    gpu = Predictor(model, "cuda", dtype=dtype)
    assert gpu.backend == "torch" and next(gpu.model.parameters()).is_cuda
    images, texts = _random_inputs(24, 32, seed=1)
    tolerance = {"fp32": 1e-4, "bf16": 0.05, "fp16": 0.01}[dtype]
    for method in ("raw", "gradient"):
        want = cpu.analyse_batch(images, texts, method)
        got = gpu.analyse_batch(images, texts, method)
        for w, g in zip(want, got):
            for row in w.contributions:
                assert (
                    max(abs(w.contributions[row][k] - g.contributions[row][k]) for k in w.contributions[row])
                    < tolerance
                )
            assert g.prediction.explanation.heatmap.device.type == "cpu"  # results come back to the CPU


def test_checkpoint_loads_onto_the_gpu_and_answers(tiny_checkpoint, fixture_path):
    predictor = Predictor.from_checkpoint(tiny_checkpoint, "cuda")
    prediction = predictor.predict(fixture_path("chelsea.jpg"), "Where is the cat?")
    on_cpu = Predictor.from_checkpoint(tiny_checkpoint, "cpu").predict(fixture_path("chelsea.jpg"), "Where is the cat?")
    assert prediction.label == on_cpu.label  # the CPU's answer
    assert abs(sum(prediction.scores.values()) - 1) < 1e-4


def test_training_runs_on_the_gpu(tmp_path):
    from mmdemo.datasets.csv_table import read_csv
    from mmdemo.datasets.sortofclevr import generate
    from mmdemo.training.loop import train
    from mmdemo.training.settings import TrainSettings

    csv_path = generate(tmp_path / "data", 12, seed=0)
    dataset = read_csv(csv_path, "image", "text", "label")
    config = tiny_config(labels=dataset.labels)
    result = train(dataset, None, TrainSettings(epochs=1, batch_size=32, freeze=[], device="cuda"), config=config)
    assert len(result.history) == 1 and result.best_metrics


def test_ddp_over_nccl_with_one_process():
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        model = _tiny().train().cuda()
        # the "missing image" token is unused when no image is dropped
        ddp = DistributedDataParallel(model, device_ids=[0], find_unused_parameters=True)
        images, texts = _random_inputs(8, 32, seed=2)
        predictor = Predictor(copy.deepcopy(_tiny()), "cpu", backend="torch")
        pixels, batch = predictor.pixels(images).cuda(), predictor.tokens(texts)
        logits = ddp(pixels, batch.input_ids.cuda(), batch.attention_mask.cuda()).logits
        loss = torch.nn.functional.cross_entropy(logits, torch.zeros(8, dtype=torch.long, device="cuda"))
        loss.backward()
        assert all(p.grad is not None and p.grad.is_cuda for p in model.head.parameters())
        total = torch.ones(1, device="cuda")
        dist.all_reduce(total)
        assert total.item() == 1
    finally:
        dist.destroy_process_group()


def test_training_under_torchrun_uses_nccl_ddp(tmp_path, monkeypatch):
    """What ``torchrun --nproc_per_node 1 -m mmdemo train --device cuda`` runs: the training
    engine's own DDP path over NCCL, one process (tests/training/test_distributed.py runs it on gloo)."""
    import math

    import torch.distributed as dist

    from mmdemo.datasets.csv_table import read_csv
    from mmdemo.datasets.sortofclevr import generate
    from mmdemo.training import distributed
    from mmdemo.training.loop import train
    from mmdemo.training.settings import TrainSettings

    dataset = read_csv(generate(tmp_path / "data", 12, seed=0), "image", "text", "label")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LOCAL_RANK", "0")
    settings = TrainSettings(epochs=2, batch_size=32, freeze=["image_encoder"], device="cuda")
    try:
        result = train(dataset, None, settings, config=tiny_config(labels=dataset.labels))
        assert dist.get_backend() == "nccl" and result.world_size == 1
    finally:
        distributed.teardown()
    rows = sum(1 for _ in dataset.examples) - len(result.val_targets)
    assert [h["optimizer_steps"] for h in result.history] == [math.ceil(rows / 32)] * 2
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in result.history)
    assert next(result.model.parameters()).device.type == "cpu"
