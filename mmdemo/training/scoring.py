"""Logits and scores of a model on prepared rows (the feature cache, features.py): the
validation pass of the training loop, the baselines in a training record, ``python -m mmdemo
evaluate`` and the Sort-of-CLEVR benchmarks all score through here.
"""

from __future__ import annotations

import torch

from ..datasets.csv_table import Example
from ..device import autocast, resolve_device
from ..metrics import classification_report, reliability
from ..model.classifier import MultimodalClassifier
from . import distributed
from .features import Encoded
from .settings import Progress


@torch.no_grad()
def predict_encoded(
    model: MultimodalClassifier,
    encoded: Encoded,
    device: torch.device,
    batch_size: int = 256,
    drop: str | None = None,
    ctx: distributed.Context = distributed.SINGLE,
    tasks: bool = False,
) -> torch.Tensor | list[torch.Tensor]:
    """(N, L) logits of every row, in row order; ``drop`` "image" or "text" masks that modality.
    Under torchrun (``ctx``) each process runs its share of the batches and all get every row.
    ``tasks``: a list of every task's (N, L_t) logits, the first task's first."""
    model.eval()
    # group by image so trained image encoders still run once per image
    order = torch.argsort(encoded.rows_image, stable=True)
    chunks = order.split(batch_size)

    def run(lo: int, hi: int) -> torch.Tensor:
        all_logits = []
        for chunk in chunks[lo:hi]:
            masked = torch.full((len(chunk),), True, device=device)
            drop_image = masked if drop == "image" else None
            drop_text = masked if drop == "text" else None
            with autocast(device):
                fm, px, ts, mask, index = encoded.batch(model, chunk, device)
                out = model.forward_fusion(fm, ts, mask, drop_image, drop_text, image_index=index, pixels=px)
                all_logits.append(torch.cat(out.task_logits(), -1).float().cpu())
        return torch.cat(all_logits)

    sizes = [len(labels) for labels in model.config.task_labels()]
    logits = torch.empty(len(order), sum(sizes))
    logits[order] = ctx.map_concat(len(chunks), run)
    per_task = list(logits.split(sizes, -1))
    return per_task if tasks else per_task[0]


def evaluate_model(
    model: MultimodalClassifier,
    examples: list[Example],
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    *,
    tasks: dict[str, str] | None = None,
) -> dict:
    """The classification report of ``model`` on labelled examples (unknown labels count as errors).
    ``tasks``: label column -> the model's task it answers, in column order; None: ``Example.label`` answers the first task. With more than that, the
    report is the first column's task's, plus ``tasks``: every task's report, each over the rows
    with a label for it, with its ``predictions`` and ``confidences`` for every row."""
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    model = model.to(device)
    encoded = Encoded(model, examples, device, progress or (lambda event: None))
    config = model.config
    names = config.task_names()
    columns = list(tasks or {})
    if not tasks or (len(tasks) == 1 and tasks[columns[0]] == names[0]):
        logits = predict_encoded(model, encoded, device)
        return _task_report(logits, config.labels, config.temperature, [e.label for e in examples])
    every = predict_encoded(model, encoded, device, tasks=True)
    reports = {}
    for column, task in tasks.items():
        t = names.index(task)
        # rows read with one label column keep it in ``label``, with several in ``labels``
        truth = [e.labels.get(column, "") if e.labels else e.label for e in examples]
        reports[task] = _task_report(every[t], config.task_labels()[t], config.task_temperatures()[t], truth)
    first = reports[tasks[columns[0]]]
    return {**first, "tasks": reports}


def _task_report(logits: torch.Tensor, labels: list[str], temperature: float, truth: list[str]) -> dict:
    """One task's report over the rows with a label ("" = none: left out); ``predictions`` and
    ``confidences`` of every row."""
    predicted = [labels[i] for i in logits.argmax(-1).tolist()]
    # confidence as the Predictor reports it: softmax of logits / the fitted temperature
    confidences = (logits / temperature).softmax(-1).max(-1).values.tolist()
    known = [i for i, t in enumerate(truth) if t]
    truth_known, predicted_known = [truth[i] for i in known], [predicted[i] for i in known]
    all_labels = list(labels) + sorted(set(truth_known) - set(labels))
    report = classification_report(truth_known, predicted_known, all_labels)
    report["reliability"] = reliability(
        [confidences[i] for i in known], [t == p for t, p in zip(truth_known, predicted_known)]
    )
    report["ece"] = report["reliability"]["ece"]
    report["predictions"] = predicted
    report["confidences"] = confidences
    return report


@torch.no_grad()
def modality_baselines(
    model,
    encoded: Encoded,
    targets: torch.Tensor,
    train_targets: torch.Tensor,
    device,
    ctx=distributed.SINGLE,
    task: int = 0,
) -> dict:
    """Validation accuracy of the majority class and of the model shown one modality only (the
    other masked as in modality dropout): what the multimodal model adds over each alone.
    ``task``: which task's answers (rows without a label for it, target -1, are left out)."""
    known, train_known = targets >= 0, train_targets >= 0
    targets = targets[known]
    majority = int(torch.bincount(train_targets[train_known]).argmax())
    result = {"majority": float((targets == majority).float().mean())}
    for name, drop in (("image_only", "text"), ("text_only", "image")):
        logits = predict_encoded(model, encoded, device, drop=drop, ctx=ctx, tasks=True)[task][known]
        result[name] = float((logits.argmax(-1) == targets).float().mean())
    return result
