"""Stage 2 of a run: whether it runs, for how long, and what each stage did.

Stage 1 (the recipe's default) trains the fusion and head on cached encoder outputs until
early stopping; then, when the time left allows, stage 2 also trains the top blocks of the
frozen image encoder, with a lower rate for each block further down (layer-wise decay), its
BatchNorm statistics kept (the encoder stays in eval mode), on augmented copies of the
training images (augment.py). Stage 2 keeps stage 1's best epoch as the one to beat: if no
stage-2 epoch is better on validation, the model is stage 1's. The plan is made at run time
from this run's own epoch times, so it holds on any machine.
"""

from __future__ import annotations

import statistics

from . import distributed
from .settings import TrainSettings


def plan_stage2(
    settings: TrainSettings,
    history: list[dict],
    *,
    stopped: bool,
    train_images: int,
    val_images: int,
    prepare_seconds: float,
    time_left: float | None,
) -> dict:
    """Whether stage 2 runs, for how many epochs, and why: only after stage 1 ended on its own
    (early stopping or its last epoch; ``stopped``: it was stopped), and only when setting it
    up, ``stage2_patience`` + 1 of its epochs and the final passes fit the time left. A stage-2
    epoch is expected to take ``stage2_cost`` times a stage-1 epoch as measured on this machine
    in this run (``history``); setting up encodes every training image's copies below the
    tuned blocks at the rate preparing the ``train_images`` + ``val_images`` images took."""
    plan = {"stage": 2, "blocks": settings.stage2_blocks, "ran": False}
    stage1 = [h for h in history if h.get("training_stage", 1) == 1 and h["complete"]]
    plan["first_epoch"] = (history[-1]["epoch"] if history else 0) + 1
    if stopped or not stage1:
        return plan | {"why": "stage 1 was stopped (time limit or stop) before it ended on its own"}
    epoch_s = settings.stage2_cost * statistics.median(h["epoch_seconds"] for h in stage1)
    images = train_images * settings.augment_views + val_images
    done = train_images + val_images
    setup_s = prepare_seconds * images / max(1, done)  # encoding below the top blocks, per copy
    finish_s = prepare_seconds  # calibration, baselines, out-of-scope statistics after training
    plan["estimate"] = {"epoch_s": round(epoch_s, 1), "setup_s": round(setup_s, 1), "finish_s": round(finish_s, 1)}
    needed = settings.stage2_patience + 1
    if time_left is None:
        epochs = settings.stage2_epochs
    else:
        epochs = min(settings.stage2_epochs, int((time_left - setup_s - finish_s) / max(epoch_s, 1e-6)))
        plan["time_left_s"] = round(time_left, 1)
        if epochs < needed:
            return plan | {
                "why": f"{time_left:.0f} s left; stage 2 needs about {setup_s + finish_s + needed * epoch_s:.0f} s"
                f" ({setup_s:.0f} s to set up, {needed} epochs of about {epoch_s:.0f} s, {finish_s:.0f} s to finish)"
            }
    why = f"{epochs} epochs of about {epoch_s:.0f} s fit" + (
        " (no time limit)" if time_left is None else f" the {time_left:.0f} s left"
    )
    return plan | {"ran": True, "max_epochs": epochs, "why": why}


def agree_plan(ctx: distributed.Context, plan: dict) -> dict:
    """Rank 0's stage-2 decision on every process (each planned from its own clock)."""
    if not ctx.distributed:
        return plan
    ran, epochs = ctx.sum([float(plan["ran"]), float(plan.get("max_epochs", 0))] if ctx.is_main else [0.0, 0.0])
    return plan | {"ran": bool(ran), "max_epochs": int(epochs)} if ran else plan | {"ran": False}


def stage_summaries(history: list[dict], stage2: dict | None, prepare_seconds: float) -> list[dict]:
    """Per stage: its epochs, wall time (setup + epochs), median training samples/s; stage 2
    also says why it ran or did not."""
    summaries = []
    for stage in (1, 2):
        epochs = [h for h in history if h.get("training_stage", 1) == stage]
        summary: dict = {"stage": stage}
        if stage == 2:
            if stage2 is None:
                break
            summary |= {k: v for k, v in stage2.items() if k not in ("stage", "first_epoch")}
        if epochs:
            setup = prepare_seconds if stage == 1 else stage2.get("setup_seconds", 0.0)
            rates = sorted(h["samples_per_s"] for h in epochs)
            summary |= {
                "epochs": [epochs[0]["epoch"], epochs[-1]["epoch"]],
                "seconds": round(setup + sum(h.get("epoch_seconds", 0.0) for h in epochs), 1),
                "samples_per_s": rates[len(rates) // 2],
                "best_val_accuracy": max(h.get("val_accuracy", h["train_accuracy"]) for h in epochs),
            }
        summaries.append(summary)
    return summaries
