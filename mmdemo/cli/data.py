"""``make-sort-of-clevr`` and ``make-real-benchmark``: data sets written to a folder (images + CSVs)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_make_sort_of_clevr(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-sort-of-clevr", help="generate a Sort-of-CLEVR dataset (images + data.csv)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phrasing", choices=("train", "canonical", "held-out"), default="train")
    p.add_argument(
        "--tasks",
        action="store_true",
        help="several label columns instead: each row names one object; shape, side, height and nearest_shape"
        " answer about it",
    )
    p.set_defaults(func=_make_sort_of_clevr)


def add_make_real_benchmark(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-real-benchmark",
        help="real-data benchmark CSVs (sklearn digit scans, scikit-image photo patches, colour photo crops)",
    )
    p.add_argument("--kind", choices=("digits", "photo-patches", "photo-crops"), required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baselines", action="store_true", help="also score pixel baselines (logistic regression, SVM)")
    p.set_defaults(func=_make_real_benchmark)


def _make_sort_of_clevr(args) -> int:
    from ..datasets.sortofclevr import generate, generate_tasks

    if args.tasks:
        path = generate_tasks(args.out, args.images, args.seed)
        print(json.dumps({"csv": str(path), "images": args.images, "rows": args.images * 6}))
        return 0
    path = generate(args.out, args.images, args.seed, args.phrasing)
    print(json.dumps({"csv": str(path), "images": args.images, "rows": args.images * 20}))
    return 0


def _make_real_benchmark(args) -> int:
    from ..datasets import real as realbench

    make = {
        "digits": realbench.make_digits,
        "photo-patches": realbench.make_photo_patches,
        "photo-crops": realbench.make_photo_crops,
    }[args.kind]
    result = make(args.out, seed=args.seed)
    if args.baselines:
        from ..benchmarks.baselines import baselines

        result["baselines"] = baselines(Path(result["train"]), Path(result["test"]))
    print(json.dumps(result))
    return 0
