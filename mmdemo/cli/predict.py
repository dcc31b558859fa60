"""``predict`` (an image + text, or every row of a CSV, sharded under torchrun) and ``export`` (ONNX)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from ..explain.methods import DEFAULT_METHOD, METHODS
from .common import DEFAULT_CHECKPOINT, ColumnList, add_common, add_engine, load_predictor, read_rows


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify an image + text, or every row of a CSV")
    add_common(p)
    p.add_argument("--image", type=Path, help="image file")
    p.add_argument("--text", help="the text (e.g. a question about the image)")
    p.add_argument("--csv", type=Path, help="batch mode: CSV with columns image,text (paths relative to the CSV)")
    p.add_argument("--out", type=Path, help="batch mode: output CSV")
    p.add_argument("--image-column", default="image")
    p.add_argument(
        "--text-column",
        action=ColumnList,
        default=["text"],
        help="batch mode: the text column; several (repeated or comma-separated) are joined as training joined them",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--task", help="explain this task's answer (a model with several label columns; default: the first)")
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD, help="explanation method")
    add_engine(p)
    p.set_defaults(func=_predict)


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a checkpoint's whole model to ONNX")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint folder")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    p.set_defaults(func=_export)


def _predict(args) -> int:
    if args.csv:
        if args.image or args.text:
            raise ValueError("give either --csv (batch mode) or --image and --text, not both")
        if not args.out:
            raise ValueError("batch mode needs --out FILE for the results")
        return _predict_csv(args)
    if not args.image or args.text is None:
        raise ValueError("predict needs --image and --text (or --csv and --out)")
    prediction = load_predictor(args).predict(args.image, args.text, args.method, args.task)
    print(json.dumps(prediction.to_json()))
    return 0


def _predict_csv(args) -> int:
    from tqdm import tqdm

    from ..datasets.csv_table import join_texts
    from ..imaging import decode_image

    text_columns = args.text_column
    rows, fields = read_rows(args.csv, [args.image_column, *text_columns])
    rank, world = _distributed_rank()
    predictor = load_predictor(args)
    predictor.task_index(args.task)  # an unknown task fails before any row
    scope_fields = ("in_scope", "scope_reasons", "image_distance", "text_similarity", "image_reliance")
    # a model with several tasks: each task's answer too (``prediction`` is the first task's)
    task_fields = [f"{kind}_{t}" for t in predictor.task_names for kind in ("prediction", "confidence")]
    task_fields = task_fields if len(predictor.task_names) > 1 else []
    out_fields = fields + [
        f for f in ("prediction", "confidence", *task_fields, *scope_fields, "peak_x", "peak_y", "error")
        if f not in fields
    ]  # fmt: skip
    text_of = lambda row: join_texts([(row[c] or "").strip() for c in text_columns])  # noqa: E731
    root = args.csv.resolve().parent
    # under torchrun each process takes every world-th batch: the batches (and so every figure)
    # are the ones a single process would make, and rank 0 writes them back in input order
    starts = list(range(0, len(rows), args.batch_size))[rank::world]
    with tqdm(total=len(rows), desc="predict", unit="row", file=sys.stderr, disable=rank > 0) as bar:
        for start in starts:
            batch = rows[start : start + args.batch_size]
            ready = []  # (row, image) pairs that decoded
            for row in batch:
                # a row that fails is not an answer in scope
                row.update(prediction="", confidence="", peak_x="", peak_y="", error="", in_scope="false")
                row.update({f: "" for f in (*scope_fields[1:], *task_fields)})
                try:
                    if not text_of(row):
                        raise ValueError("the text is empty")
                    ready.append(
                        (row, decode_image(root / (row[args.image_column] or ""), name=row[args.image_column]))
                    )
                except ValueError as e:
                    row["error"] = str(e)
            if ready:
                try:
                    results = predictor.predict_batch(
                        [im for _, im in ready], [text_of(r) for r, _ in ready], args.method, args.task
                    )
                except (ValueError, RuntimeError) as e:  # keep going: mark the whole batch
                    results = [None] * len(ready)
                    for row, _ in ready:
                        row["error"] = f"prediction failed: {e}"
                for (row, _), result in zip(ready, results):
                    if result is not None:
                        row.update(
                            prediction=result.label,
                            confidence=f"{result.scores[result.label]:.4f}",
                            in_scope="true" if result.in_scope else "false",
                            scope_reasons=" ".join(result.scope["reasons"]),
                            image_distance=result.scope.get("image_distance", ""),
                            text_similarity=result.scope.get("text_similarity", ""),
                            image_reliance=result.scope.get("image_reliance", ""),
                            peak_x=f"{result.explanation.peak_xy[0]:.1f}",
                            peak_y=f"{result.explanation.peak_xy[1]:.1f}",
                        )
                        for name, answer in result.tasks.items() if task_fields else ():
                            row[f"prediction_{name}"] = answer["label"]
                            row[f"confidence_{name}"] = f"{answer['confidence']:.4f}"
            bar.update(len(batch) * world)
    if world > 1:
        rows = _merge_shards(rows, starts, args.batch_size, rank, world)
        if rank > 0:
            return 0
    n_errors = sum(1 for row in rows if row["error"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=out_fields)
        writer.writeheader()
        writer.writerows(rows)
    print(json.dumps({"rows": len(rows), "predicted": len(rows) - n_errors, "errors": n_errors, "out": str(args.out)}))
    return 0


def _distributed_rank() -> tuple[int, int]:
    """(rank, world size) under torchrun (the gloo process group joined as training joins it,
    with its timeout), else (0, 1)."""
    import torch

    from ..device import env_world_size
    from ..training import distributed

    if env_world_size() == 1:
        return 0, 1
    ctx, _ = distributed.setup(torch.device("cpu"))
    return ctx.rank, ctx.world_size


def _merge_shards(rows: list[dict], starts: list[int], batch_size: int, rank: int, world: int) -> list[dict]:
    """Rank 0 gets every process's rows back, in input order; the process group is closed."""
    import torch.distributed as dist

    from ..training import distributed

    mine = {i: rows[i] for start in starts for i in range(start, min(start + batch_size, len(rows)))}
    gathered = [None] * world if rank == 0 else None
    try:
        dist.gather_object(mine, gathered, dst=0)
    finally:
        distributed.teardown()
    if rank > 0:
        return rows
    merged = {i: row for shard in gathered for i, row in shard.items()}
    return [merged[i] for i in range(len(rows))]


def _export(args) -> int:
    from ..inference.export import export_onnx
    from ..model.checkpoint import load_checkpoint

    print(json.dumps(export_onnx(load_checkpoint(args.checkpoint), args.out)))
    return 0
