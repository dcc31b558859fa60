"""What a fine-tune reports before its first training step, in order: loading the starting
model, choosing the settings, then counts for each preparation phase, each of which the job's
status line has words for (training/features.py PHASE_WORDS)."""

import torch

from mmdemo.datasets.csv_table import read_csv
from mmdemo.model.checkpoint import save_checkpoint
from mmdemo.model.classifier import build_model
from mmdemo.training.features import PHASE_WORDS
from mmdemo.training.finetune import FinetuneRequest, finetune

from ..conftest import tiny_config
from .test_start_comparison import _write


def test_a_fine_tune_reports_each_phase_before_training(tmp_path):
    torch.manual_seed(0)
    start = save_checkpoint(build_model(tiny_config(labels=["blue", "red"], frozen=["text_encoder"])), tmp_path / "s")
    events = []
    request = FinetuneRequest(read_csv(_write(tmp_path, "train.csv", range(8))), tmp_path / "new", init=start)
    finetune(request, events.append, should_stop=lambda: any(e["stage"] == "train" for e in events))
    messages = [e["message"] for e in events if e["stage"] == "prepare"]
    assert messages[:2] == ["loading the model 's'", "choosing the settings (timing this machine)"]
    first_step = next(i for i, e in enumerate(events) if e["stage"] == "train")
    counted = {e["stage"] for e in events[:first_step] if "total" in e}
    assert {"encode images", "encode texts"} <= counted <= set(PHASE_WORDS)
