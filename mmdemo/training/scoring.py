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
) -> dict:
    """The classification report of ``model`` on labelled examples (unknown labels count as errors)."""
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    model = model.to(device)
    encoded = Encoded(model, examples, device, progress or (lambda event: None))
    logits = predict_encoded(model, encoded, device)
    labels = model.config.labels
    predicted = [labels[i] for i in logits.argmax(-1).tolist()]
    truth = [e.label for e in examples]
    all_labels = labels + sorted(set(truth) - set(labels))
    report = classification_report(truth, predicted, all_labels)
    # confidence as the Predictor reports it: softmax of logits / the fitted temperature
    confidences = (logits / model.config.temperature).softmax(-1).max(-1).values.tolist()
    report["reliability"] = reliability(confidences, [t == p for t, p in zip(truth, predicted)])
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
