"""bench-train: samples/s of a training step on cached features, per image size."""

import json
import subprocess
import sys

from mmdemo.benchmarks.training_speed import step_samples_per_s


def test_the_step_reads_the_regions_of_each_size_and_leaves_torch_as_it_was():
    import torch

    before = torch.get_num_threads()
    small, large = step_samples_per_s(32, batch_size=6, steps=2, threads=1), step_samples_per_s(64, 6, 2, 1)
    assert (small["regions"], large["regions"]) == (4, 16)
    assert small["samples_per_s"] > 0 and small["step_ms"] > 0 and small["threads"] == 1
    assert torch.get_num_threads() == before


def test_the_command_prints_one_figure_per_size_and_names_a_bad_size():
    run = lambda *a: subprocess.run([sys.executable, "-m", "mmdemo", "bench-train", *a], capture_output=True, text=True)  # noqa: E731
    done = run("--sizes", "32", "48", "--steps", "1", "--batch-size", "6", "--threads", "1")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert [f["image_size"] for f in figures["sizes"]] == [32, 48] and "48 px:" in done.stderr
    bad = run("--sizes", "4")
    assert bad.returncode == 2 and "--sizes: 4 px is outside 16..1024" in bad.stderr and "Traceback" not in bad.stderr


def test_the_step_can_add_the_contrastive_loss():
    with_loss = step_samples_per_s(32, batch_size=6, steps=2, threads=1, contrastive=0.5)
    assert with_loss["contrastive"] == 0.5 and with_loss["step_ms"] > 0


def test_the_step_reads_pooled_regions():
    pooled = step_samples_per_s(64, batch_size=6, steps=2, threads=1, region_pool=2)
    assert pooled["regions"] == 4 and pooled["region_pool"] == 2 and pooled["step_ms"] > 0
