"""``audit`` (wrong labels, duplicates, leaks and outliers of a training CSV, written to
audit.csv) and ``bench-audit`` (the audit measured on digit scans with known problems)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import add_columns, read_dataset


def add_audit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="find likely wrong labels, duplicated images, leaks into a test CSV and outliers before training",
    )
    p.add_argument("--csv", type=Path, required=True, help="training CSV; image paths relative to its folder")
    p.add_argument("--out", type=Path, required=True, help="the findings, one row each (audit.csv)")
    p.add_argument("--test-csv", type=Path, help="a test CSV: its images found in the training CSV are leaks")
    p.add_argument(
        "--checkpoint", type=Path, help="use this checkpoint's encoders and image size (default: the recipe's)"
    )
    add_columns(p)
    p.add_argument("--group-column", help="column naming each row's source: a source's rows are judged together")
    p.add_argument("--folds", type=int, default=5, help="folds of the out-of-fold predictions (default 5)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_audit)


def add_bench_audit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench-audit",
        help="the audit on digit scans with injected wrong labels and duplicates: precision, recall, seconds,"
        " and accuracy trained with and without the flagged rows",
    )
    p.add_argument("--workdir", type=Path, default=Path("/tmp/mmdemo-bench-audit"), help="where the data sets go")
    p.add_argument("--rates", type=float, nargs="+", default=[0.02, 0.05, 0.10], help="shares of labels made wrong")
    p.add_argument("--duplicates", type=int, default=15, help="scans copied under another name")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--train-minutes",
        type=float,
        default=0.0,
        help="also train on the noisy data and on it without the flagged rows, this many minutes each"
        " (time limit), and score both on the clean test CSV (0: skip)",
    )
    p.add_argument("--train-rate", type=float, default=0.05, help="the noise rate whose data --train-minutes trains on")
    p.set_defaults(func=_bench_audit)


def _audit(args) -> int:
    from ..audit.core import AuditSettings, run_audit, write_audit_csv
    from ..training.recipe import cpu_threads

    if args.out.exists() and not args.overwrite:
        raise ValueError(f"{args.out} already exists (pass --overwrite to replace it)")
    if args.folds < 2:
        raise ValueError(f"--folds must be at least 2, got {args.folds}")
    if args.checkpoint is not None and not (args.checkpoint / "config.json").is_file():
        raise ValueError(f"--checkpoint {args.checkpoint}: not a checkpoint folder (no config.json)")
    dataset = read_dataset(args.csv, args, group_column=args.group_column)
    test = read_dataset(args.test_csv, args) if args.test_csv else None
    _set_threads(cpu_threads()[0])
    result = run_audit(
        dataset,
        _progress(),
        test=test,
        checkpoint=args.checkpoint,
        device=args.device,
        settings=AuditSettings(folds=args.folds),
        image_column=args.image_column,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_audit_csv(result.findings, args.out)
    print(result.summary(), file=sys.stderr)
    print(f"findings written to {args.out}", file=sys.stderr)
    print(json.dumps(result.counts))
    return 0


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


def _progress():
    """One line per phase and per tenth of a phase's chunks, on stderr."""
    shown: dict[str, int] = {}

    def progress(event: dict) -> None:
        stage = event["stage"]
        if "message" in event:
            print(f"{event.get('phase', stage)}: {event['message']}", file=sys.stderr)
        elif "done" in event:
            tenth = 10 * event["done"] // max(1, event["total"])
            if shown.get(stage) != tenth:
                shown[stage] = tenth
                print(f"{stage}: {event['done']:,}/{event['total']:,}", file=sys.stderr)

    return progress


def _bench_audit(args) -> int:
    from ..benchmarks.audit import audit_benchmark
    from ..training.recipe import cpu_threads

    _set_threads(cpu_threads()[0])
    result = audit_benchmark(
        args.workdir, args.rates, args.duplicates, args.seed, args.train_minutes, args.train_rate, log=_progress()
    )
    print(json.dumps(result))
    return 0
