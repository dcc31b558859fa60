"""What a training run takes and gives back: its settings, its result, the state a resume
continues from, and the progress callback's type.

Kept apart from the loop so that the recipe, the fine-tune path, the CLI and the app can build
and read these without importing the training engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..model.classifier import PARTS, MultimodalClassifier

Progress = Callable[[dict], None]  # one event, a dict keyed by "stage" (tqdm in the CLI, gr.Progress in the UI)


@dataclass
class TrainSettings:
    """How one run trains: the recipe (recipe.py) chooses these from the data and the budget,
    and every explicit flag overrides its choice."""

    epochs: int = 10
    batch_size: int = 64  # rows (questions) per step
    lr: float = 3e-4  # fusion and head
    encoder_lr: float = 1e-4  # encoders that are trained
    weight_decay: float = 0.05
    warmup: float = 0.05  # fraction of the steps
    freeze: list[str] = field(default_factory=lambda: list(PARTS))
    modality_dropout: float = 0.1  # per sample: image dropped with p/2, text dropped with p/2
    class_weights: bool = False
    label_smoothing: float = 0.0
    # weight of the image–text contrastive loss added to the classification loss (0: off; see
    # contrastive.py)
    contrastive: float = 0.0
    grad_clip: float = 1.0
    patience: int | None = None  # stop after this many epochs without a better validation score
    cpu_threads: int | None = None  # torch threads on a CPU (None: torch's default)
    seed: int = 0
    device: str | None = None
    # stage 2, after stage 1 ended on its own with time to spare: also train the top
    # ``stage2_blocks`` blocks of the frozen image encoder (0: no stage 2)
    stage2_blocks: int = 0
    stage2_epochs: int = 10  # at most (fewer when the time left is shorter)
    stage2_lr: float = 1e-4  # fusion and head; the highest block gets stage2_lr * layer_decay ...
    layer_decay: float = 0.5  # ... and each block below it layer_decay times less
    stage2_patience: int = 3
    stage2_cost: float = 1.0  # one stage-2 epoch takes this many stage-1 epochs (the recipe's estimate)
    # augmentation: ``augment_views`` copies of each training image (the first as it is; see
    # augment.py), shifted by up to ``augment_shift`` of the side, zoomed in on a part whose side
    # is ``augment_zoom``..1 of the whole, mirrored (``augment_mirror``), blurred by up to
    # ``augment_blur`` pixels, brightness and contrast jittered by up to ``augment_colour``.
    # Stage 2 trains on them; stage 1 too with ``stage1_augment`` (each copy encoded once by the
    # frozen encoder, an epoch showing one copy of each image)
    augment_views: int = 1
    augment_shift: float = 0.0
    augment_colour: float = 0.0
    augment_zoom: float = 1.0
    augment_mirror: bool = False
    augment_blur: float = 0.0
    stage1_augment: bool = False
    # several tasks: the loss is the sum over the tasks of each task's weight times its loss
    # (None: 1 each)
    task_weights: list[float] | None = None
    # more stage-1 epochs when the planned ones end with time to spare (loop._extend_stage1): the
    # recipe turns it on for the epochs it chose, never for epochs set explicitly
    extend_epochs: bool = False


@dataclass
class TrainResult:
    """What ``train()`` gives back: the model at its best epoch and how it got there."""

    model: MultimodalClassifier  # holds the best epoch's weights
    best_epoch: int
    best_metrics: dict
    history: list[dict]
    seconds: float
    stopped_early: bool = False  # by the patience rule
    val_logits: torch.Tensor | None = None  # (N, L) of the best model on the validation rows
    val_targets: torch.Tensor | None = None  # (N,) label index, -1 for labels the model lacks
    baselines: dict = field(default_factory=dict)  # validation accuracy: majority, image only, text only
    stages: list[dict] = field(default_factory=list)  # what each stage did (or why it did not run)
    world_size: int = 1  # processes that trained it (torchrun)
    # several tasks: (logits, targets) of every task on the validation rows, and their baselines
    task_val: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    task_baselines: list[dict] = field(default_factory=list)


@dataclass
class TrainState:
    """Everything a run needs to continue after its last complete epoch exactly as if it had
    not stopped: weights, optimizer and scheduler state, random generators, the best epoch."""

    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    generator: torch.Tensor
    torch_rng: torch.Tensor
    best: dict  # {"score": [...], "epoch": int, "metrics": dict}
    best_model: dict[str, torch.Tensor]
    history: list[dict]
    stale_epochs: int
    stage: int = 1  # the stage that epoch belongs to
    stage2: dict | None = None  # stage 2's plan, once decided (see stage2.plan_stage2)
    world_size: int = 1  # a run resumes with as many processes as it had
    contrastive: dict[str, torch.Tensor] = field(default_factory=dict)  # the contrastive loss's projections


class Stopped(RuntimeError):
    """Stop asked while the data was being prepared (before the first training step)."""
