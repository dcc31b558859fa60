"""``similar`` (the training rows most like an image + text), ``index-similar`` (build a
checkpoint's similar-examples index from a CSV or from generated Sort-of-CLEVR scenes) and
``bench-similar`` (do the nearest training rows share a new row's label?).

``similar`` prints one JSON object per line, most similar first: image, text, label, similarity.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from .common import add_columns, add_common


def add_similar(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("similar", help="the training rows most similar to an image + text (one JSON line each)")
    add_common(p)
    p.add_argument("--image", type=Path, required=True, help="image file")
    p.add_argument("--text", required=True, help="the text (e.g. a question about the image)")
    p.add_argument("--k", type=int, default=5, help="how many rows (1-50)")
    p.set_defaults(func=_similar)


def add_index_similar(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index-similar",
        help="build a checkpoint's similar-examples index from its training CSV (or generated Sort-of-CLEVR scenes)",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder (its index files are replaced)")
    p.add_argument("--csv", type=Path, help="the training rows (image,text,label; paths relative to the CSV)")
    add_columns(p)
    p.add_argument(
        "--sort-of-clevr", type=int, metavar="N", help="instead of --csv: the first N scenes make-sort-of-clevr writes"
    )
    p.add_argument("--seed", type=int, default=1, help="with --sort-of-clevr: the generator's seed")
    p.add_argument("--thumbnail-side", type=int, default=48, help="px, the longer side of a stored thumbnail")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_index_similar)


def add_bench_similar(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-similar", help="digit scans: do the most similar training rows share the label?")
    p.add_argument("--data", type=Path, default=Path("data/digits"), help="make-real-benchmark --kind digits folder")
    p.add_argument("--workdir", type=Path, default=Path("data/bench-similar"), help="where the model is trained")
    p.add_argument("--checkpoint", type=Path, help="a model trained on --data already (skips training)")
    p.add_argument("--time-limit", type=float, default=5.0, help="minutes of training")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--device", default=None)
    p.set_defaults(func=_bench_similar)


def _similar(args) -> int:
    from ..imaging import decode_image
    from ..inference.similar import INDEX_JSON, load_index, similar_to
    from ..model.checkpoint import load_checkpoint

    index = load_index(args.checkpoint)
    if index is None:
        raise ValueError(
            f"checkpoint {args.checkpoint.name!r} has no similar-examples index ({INDEX_JSON}): checkpoints trained by"
            " python -m mmdemo train have one; build one with python -m mmdemo index-similar --checkpoint"
            f" {args.checkpoint} --csv TRAINING.csv"
        )
    image = decode_image(args.image)
    model = load_checkpoint(args.checkpoint, args.device or "cpu")
    for neighbour in similar_to(model, index, image, args.text, args.k):
        print(json.dumps(neighbour.to_json()))
    return 0


def _index_similar(args) -> int:
    from ..datasets.csv_table import read_csv
    from ..datasets.sortofclevr import generate
    from ..inference.similar import INDEX_JSON, INDEX_TENSORS, save_index
    from ..model.checkpoint import load_checkpoint
    from ..training.similar_fit import index_rows

    if (args.csv is None) == (args.sort_of_clevr is None):
        raise ValueError("index-similar needs either --csv FILE or --sort-of-clevr N")
    model = load_checkpoint(args.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        if args.csv is None:  # the generator's first N scenes: those its full training set starts with
            csv_path = generate(Path(tmp) / "scenes", args.sort_of_clevr, args.seed)
            dataset = read_csv(csv_path)
        else:
            csv_path = args.csv
            dataset = read_csv(csv_path, args.image_column, args.text_column, args.label_column)
        index = index_rows(model, dataset.examples, csv_path.resolve().parent, args.device, None,
                           thumbnail_side=args.thumbnail_side)  # fmt: skip
    save_index(args.checkpoint, index)
    sizes = {name: (args.checkpoint / name).stat().st_size for name in (INDEX_TENSORS, INDEX_JSON)}
    print(f"indexed {len(index):,} rows of {len(index.images):,} images into {args.checkpoint}", file=sys.stderr)
    print(json.dumps({"rows": len(index), "images": len(index.images), "thumbnails": len(index.thumbnails),
                      "bytes": sizes}))  # fmt: skip
    return 0


def _bench_similar(args) -> int:
    from ..benchmarks.similar import bench_similar

    result = bench_similar(args.data, args.workdir, args.checkpoint, args.time_limit, args.k, args.device)
    print(json.dumps(result))
    return 0
