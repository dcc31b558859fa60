"""``add-classes`` (teach a checkpoint new labels from a few examples each, into a new
checkpoint) and ``bench-add-classes`` (that, measured on digit scans against a full fine-tune)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .common import add_columns, read_dataset


def add_add_classes(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "add-classes",
        help="teach a checkpoint new labels from a few examples each (1-20), in seconds, into a new checkpoint",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="the starting checkpoint (never changed)")
    p.add_argument("--csv", type=Path, required=True, help="the new rows: image, text, label; a few per new label")
    p.add_argument("--out", type=Path, required=True, help="folder for the new checkpoint")
    add_columns(p)
    p.add_argument(
        "--replay-csv",
        type=Path,
        help="rows of the labels the model has (default: the training CSV its record names, when it is there);"
        " a sample of them keeps the old labels' answers as they were",
    )
    p.add_argument(
        "--method",
        choices=["auto", "replay", "imprint"],
        default="auto",
        help="auto (default): replay when rows of the old labels can be read, else imprint",
    )
    p.add_argument(
        "--known-labels",
        choices=["add", "refuse"],
        default="add",
        help="rows whose label the model has: add them to its examples (default) or refuse the CSV",
    )
    p.add_argument("--task", help="the task the new labels belong to (a checkpoint with several tasks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_add_classes)


def add_bench_add_classes(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench-add-classes",
        help="digit scans: a model trained without some digits is taught them from k examples each;"
        " new and old digits' accuracy, ECE and seconds, next to a full fine-tune",
    )
    p.add_argument("--workdir", type=Path, default=Path("/tmp/mmdemo-bench-add-classes"), help="where the data goes")
    p.add_argument("--missing", nargs="+", default=["3", "8"], help="the digits the starting model never saw")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5, 20], help="examples per new digit")
    p.add_argument("--train-minutes", type=float, default=5.0, help="time limit of the starting model's training")
    p.add_argument(
        "--finetune-minutes",
        type=float,
        default=2.0,
        help="time limit of the full fine-tune it is compared with (0: skip the comparison)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_bench_add_classes)


def _add_classes(args) -> int:
    from ..model.checkpoint import is_checkpoint
    from ..training.add_classes import AddClassesRequest, add_classes, replay_csv
    from ..training.recipe import cpu_threads

    if not is_checkpoint(args.checkpoint):
        raise ValueError(f"--checkpoint {args.checkpoint}: not a checkpoint folder (no config.json or weights)")
    if args.out.exists() and not args.overwrite:
        raise ValueError(f"{args.out} already exists (pass --overwrite to replace it)")
    dataset = read_dataset(args.csv, args)
    replay_path = args.replay_csv or replay_csv(args.checkpoint)
    replay = None
    if args.method != "imprint" and replay_path is not None:
        replay = read_dataset(replay_path, args, quiet=True)
        print(f"replaying a sample of {replay_path} (rows of the labels the model has)", file=sys.stderr)
    result = add_classes(
        AddClassesRequest(
            init=args.checkpoint,
            dataset=dataset,
            out=args.out,
            replay=replay,
            method=args.method,
            known_labels=args.known_labels,
            task=args.task,
            seed=args.seed,
            overwrite=args.overwrite,
            command="python -m mmdemo " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            device=args.device,
            cpu_threads=cpu_threads()[0],
        ),
        _progress,
    )
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    record = result.record
    print(f"saved {result.checkpoint} in {record['seconds']:.1f} s", file=sys.stderr)
    print(json.dumps({"checkpoint": str(result.checkpoint), **{k: record[k] for k in SUMMARY if k in record}}))
    return 0


SUMMARY = ("added_classes", "added_to_known_classes", "method", "replay", "seconds", "metrics", "calibration")


def _progress(event: dict) -> None:
    if "message" in event:
        print(f"{event['stage']}: {event['message']}", file=sys.stderr)


def _bench_add_classes(args) -> int:
    import torch

    from ..benchmarks.add_classes import add_classes_benchmark
    from ..training.recipe import cpu_threads

    torch.set_num_threads(max(1, cpu_threads()[0]))
    result = add_classes_benchmark(
        args.workdir, args.missing, args.shots, args.train_minutes, args.finetune_minutes, args.seed, _progress
    )
    print(json.dumps(result))
    return 0
