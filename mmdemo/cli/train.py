"""``train`` (train or fine-tune on a CSV, data-parallel under torchrun) and ``fit-scope`` (a checkpoint's
out-of-scope statistics and temperature, without retraining)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import add_columns, read_dataset


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune on a CSV (image,text,label); settings not given are chosen from the data",
    )
    p.add_argument("--csv", type=Path, help="training CSV; image paths relative to its folder")
    p.add_argument("--val-csv", type=Path, help="validation CSV (default: hold out --val-split of the images)")
    p.add_argument("--val-split", type=float, default=0.1)
    p.add_argument("--out", type=Path, help="folder for the new checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--init", type=Path, help="start from this checkpoint (default: a new model)")
    p.add_argument(
        "--time-limit",
        type=float,
        help="time budget in minutes: the recipe fits its epochs to it and training stops there,"
        " keeping the best epoch (default: 10 minutes)",
    )
    p.add_argument(
        "--resume", type=Path, metavar="DIR", help="continue the stopped run that was saving to checkpoint DIR"
    )
    add_columns(p, several=True)
    p.add_argument(
        "--task-weights",
        help="with several label columns: the loss weight of each task, comma-separated in the columns' order"
        " (default: 1 each)",
    )
    p.add_argument(
        "--group-column",
        help="column naming each row's source (a product, a patient, a scene, the photo a crop was cut from):"
        " rows of one group stay together on one side of the validation split",
    )
    _add_train_settings(p)
    _add_architecture(p)
    p.add_argument("--device", default=None)
    p.set_defaults(func=_train)


def add_fit_scope(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit-scope",
        help="fit a checkpoint's out-of-scope statistics (and optionally its temperature) without retraining",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder (scope files are written there)")
    p.add_argument("--csv", type=Path, required=True, help="the training data (or data from its generator)")
    p.add_argument("--val-csv", type=Path, required=True, help="validation data: thresholds and temperature")
    p.add_argument("--max-rows", type=int, default=4000, help="rows sampled from each CSV")
    p.add_argument("--fit-temperature", action="store_true", help="also fit and store the temperature")
    p.add_argument("--device", default=None)
    add_columns(p)
    p.set_defaults(func=_fit_scope)


def _add_train_settings(p: argparse.ArgumentParser) -> None:
    """Training settings: every default is None ("not given"), so the recipe chooses it."""
    p.add_argument("--epochs", type=int, help="most epochs (default: as many as fit the time budget)")
    p.add_argument("--batch-size", type=int, help="rows per step")
    p.add_argument("--lr", type=float, help="learning rate of the fusion and head")
    p.add_argument("--encoder-lr", type=float, help="learning rate of trained encoders")
    p.add_argument("--weight-decay", type=float)
    p.add_argument(
        "--freeze",
        nargs="*",
        choices=["image_encoder", "text_encoder"],
        help="encoders to keep frozen (default: both; '--freeze' alone trains both)",
    )
    p.add_argument("--modality-dropout", type=float)
    p.add_argument(
        "--class-weights",
        action=argparse.BooleanOptionalAction,
        help="weight the loss by inverse class frequency (default: when classes are imbalanced)",
    )
    p.add_argument("--patience", type=int, help="early stopping: epochs without a better validation score")
    p.add_argument(
        "--contrastive",
        type=float,
        metavar="W",
        help="add W times an image-text contrastive loss (symmetric InfoNCE over the rows of a batch) to the"
        " classification loss (default: 0, off; docs/training.md)",
    )
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--stage2-blocks",
        type=int,
        help="after stage 1, also train this many top blocks of the frozen image encoder when the time left"
        " allows (default: 3 for a pretrained EfficientNet-Lite0; 0: one stage only)",
    )


TRAIN_SETTING_FLAGS = (
    "epochs", "batch_size", "lr", "encoder_lr", "weight_decay", "freeze", "modality_dropout", "class_weights",
    "patience", "seed", "stage2_blocks", "contrastive",
)  # fmt: skip
ARCHITECTURE_FLAGS = (
    "image_encoder", "image_size", "image_stride", "region_pool", "patch_embedding", "text_encoder", "text_model",
    "fusion_dim", "fusion_heads", "fusion_layers", "region_layers", "dropout",
)  # fmt: skip


def _add_architecture(p: argparse.ArgumentParser) -> None:
    """Architecture of a new model (ignored with --init, whose config is kept); None = default."""
    p.add_argument("--image-encoder", choices=["efficientnet_lite0", "small_cnn"])
    p.add_argument("--image-size", type=int, help="default: from the data (64 px for small scans, 224 for photos)")
    p.add_argument("--image-stride", type=int, choices=[16, 32])
    p.add_argument(
        "--region-pool", type=int, choices=[1, 2, 3, 4], help="average-pool the encoder's regions by this factor"
    )
    p.add_argument(
        "--patch-embedding",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add a linear embedding of each region's own pixels to its features (default: on)",
    )
    p.add_argument("--text-encoder", choices=["minilm", "gru"])
    p.add_argument("--text-model", help="'minilm' (packaged) or a folder / hub id")
    p.add_argument("--fusion-dim", type=int)
    p.add_argument("--fusion-heads", type=int)
    p.add_argument("--fusion-layers", type=int)
    p.add_argument("--region-layers", type=int)
    p.add_argument("--dropout", type=float)


def _train(args) -> int:
    """Under torchrun every process trains (data-parallel, see distributed.py); rank 0 reports,
    writes the checkpoint and prints the summary."""
    from ..device import env_rank
    from ..training import distributed

    try:
        return _train_run(args, env_rank())
    finally:
        distributed.teardown()


def _train_run(args, rank: int) -> int:
    import shlex

    from ..training.finetune import FinetuneRequest, finetune, plan, resume

    progress = _train_progress() if rank == 0 else None
    time_limit_s = args.time_limit * 60 if args.time_limit else None
    if args.resume:
        result = resume(args.resume, time_limit_s, progress)
    else:
        if args.csv is None or args.out is None:
            raise ValueError("train needs --csv and --out (or --resume DIR)")
        if args.out.exists() and not args.overwrite:
            raise ValueError(f"{args.out} already exists (pass --overwrite to replace it)")
        dataset = read_dataset(args.csv, args, quiet=rank > 0, group_column=args.group_column)
        val = read_dataset(args.val_csv, args, quiet=rank > 0) if args.val_csv else None
        overrides = {
            k: getattr(args, k) for k in TRAIN_SETTING_FLAGS + ARCHITECTURE_FLAGS if getattr(args, k) is not None
        }
        if args.task_weights:
            overrides["task_weights"] = _task_weights(args.task_weights, dataset.task_names())
        if args.device:
            overrides["device"] = args.device
        request = FinetuneRequest(
            dataset=dataset,
            out=args.out,
            val_dataset=val,
            val_fraction=args.val_split,
            init=args.init,
            time_limit_s=time_limit_s,
            overwrite=args.overwrite,
            command=_launcher() + " " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            overrides=overrides,
        )
        recipe = plan(request)
        if rank == 0:
            print(recipe.describe(), file=sys.stderr)
        result = finetune(request, progress, _recipe=recipe)
    if rank > 0:
        return 0
    record = result.record
    calibration = record.get("calibration", {})
    summary = {
        "checkpoint": str(result.checkpoint),
        "best_epoch": record["best_epoch"],
        "seconds": record["train_seconds"],
        "estimated_seconds": record["estimated_seconds"],
        "stopped_by": record["stopped_by"],
        **record["metrics"],
        "baselines": record.get("baselines", {}),
        "temperature": calibration.get("temperature"),
        "val_ece_before": calibration.get("ece_before"),
        "val_ece_after": calibration.get("ece_after"),
        "throughput": record["throughput"],
        "world_size": record.get("world_size", 1),
        "optimizer_steps": record.get("optimizer_steps"),
        "start_comparison": record.get("start_comparison"),
    }
    if record.get("start_comparison"):
        print(record["start_comparison"]["summary"], file=sys.stderr)
    print(json.dumps(summary))
    return 0


def _task_weights(text: str, tasks: list[str]) -> list[float]:
    """``--task-weights 1,0.5`` -> one positive weight per task."""
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise ValueError(f"--task-weights takes numbers separated by commas, got {text!r}") from None
    if len(weights) != len(tasks) or not all(w >= 0 for w in weights) or not any(weights):
        raise ValueError(
            f"--task-weights needs {len(tasks)} weights of 0 or more, not all 0 (one per label column: {', '.join(tasks)}),"
            f" got {text!r}"
        )
    return weights


def _launcher() -> str:
    """How this command was started, for the training record: torchrun's shape under torchrun."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return "python -m mmdemo"
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    nodes = f"--nnodes {world // per_node} " if world > per_node else ""
    return f"torchrun {nodes}--nproc_per_node {per_node} -m mmdemo"


def _train_progress():
    from tqdm import tqdm

    bars: dict = {}

    def progress(event: dict) -> None:
        stage = event["stage"]
        if stage == "train":
            bar = bars.get(event["epoch"])
            if bar is None:
                bar = bars[event["epoch"]] = tqdm(
                    total=event["steps"], desc=f"epoch {event['epoch']}/{event['epochs']}", file=sys.stderr
                )
            bar.update(1)
            bar.set_postfix(loss=f"{event['loss']:.4f}")
        elif stage == "split":
            print(f"split: {event['message']}", file=sys.stderr)
        elif stage == "epoch":
            if event["epoch"] in bars:
                bars[event["epoch"]].close()
            print(
                json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in event.items()}), file=sys.stderr
            )

    return progress


def _fit_scope(args) -> int:
    import torch

    from ..device import resolve_device
    from ..inference.scope import load_scope
    from ..model.checkpoint import load_checkpoint, update_training_record
    from ..training.calibration import calibration_report, fit_temperature
    from ..training.scope_fit import fit_scope, reliance_floor, sample_rows, save_scope, write_config

    train = read_dataset(args.csv, args)
    val = read_dataset(args.val_csv, args)
    model = load_checkpoint(args.checkpoint)
    stats, val_enc = fit_scope(model, train.examples, val.examples, resolve_device(args.device), max_rows=args.max_rows)
    labels = model.config.labels
    rows = sample_rows(val.examples, args.max_rows, 1)  # the rows fit_scope encoded, in order
    known = [i for i, e in enumerate(rows) if e.label in labels]
    targets = torch.tensor([labels.index(rows[i].label) for i in known])
    logits = val_enc.logits[known]
    summary = {"checkpoint": str(args.checkpoint), **stats.fitted_on, "image_threshold": stats.image_threshold}
    summary["ece_before"] = calibration_report(logits, targets, model.config.temperature)["ece_after"]
    if args.fit_temperature:
        temperature = round(fit_temperature(logits, targets), 4)
        data = json.loads((args.checkpoint / "config.json").read_text())
        data["model"]["temperature"] = temperature
        write_config(args.checkpoint, data)
        stats.reliance_floor = reliance_floor(val_enc, temperature)
        summary["temperature"] = temperature
        report = calibration_report(logits, targets, temperature)
        summary["ece_after"] = report["ece_after"]
        update_training_record(
            args.checkpoint,
            calibration={
                **report,
                "data": f"{args.val_csv.name}, {len(known)} rows",
                "command": "python -m mmdemo " + " ".join(sys.argv[1:]),
            },
        )
    stats.fitted_on["command"] = "python -m mmdemo " + " ".join(sys.argv[1:])
    save_scope(args.checkpoint, stats)
    load_scope(args.checkpoint)  # what was written reads back
    summary["reliance_floor"] = stats.reliance_floor
    print(json.dumps(summary))
    return 0
