"""Command line: ``python -m mmdemo {predict,bench,...}``.

Results go to stdout as JSON (one object, on the last line); progress and messages to stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "sort-of-clevr"


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint folder")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mmdemo", description="Multimodal (image + text) classifier")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="classify an image + text, or every row of a CSV")
    _add_common(p)
    p.add_argument("--image", type=Path, help="image file")
    p.add_argument("--text", help="the text (e.g. a question about the image)")
    p.add_argument("--csv", type=Path, help="batch mode: CSV with columns image,text (paths relative to the CSV)")
    p.add_argument("--out", type=Path, help="batch mode: output CSV")
    p.add_argument("--image-column", default="image")
    p.add_argument("--text-column", default="text")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--method", choices=("gradient", "raw"), default="gradient", help="explanation method")

    p = sub.add_parser("bench", help="speed figures of a checkpoint on this machine")
    _add_common(p)
    p.add_argument("--repeats", type=int, default=100)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "predict":
            return _predict(args)
        if args.command == "bench":
            return _bench(args)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1


def _predictor(args):
    from .service import Predictor

    return Predictor.from_checkpoint(args.checkpoint, args.device)


def prediction_json(prediction) -> dict:
    e = prediction.explanation
    return {
        "label": prediction.label,
        "scores": prediction.scores,
        "tokens": e.words,
        "token_scores": e.word_scores,
        "heatmap": [[round(float(v), 4) for v in row] for row in e.heatmap],
        "peak_xy": [round(e.peak_xy[0], 1), round(e.peak_xy[1], 1)],
        "method": e.method,
        "truncated": prediction.truncated,
        "image_size": list(prediction.image_size),
    }


def _predict(args) -> int:
    if args.csv:
        if args.image or args.text:
            raise ValueError("give either --csv (batch mode) or --image and --text, not both")
        if not args.out:
            raise ValueError("batch mode needs --out FILE for the results")
        return _predict_csv(args)
    if not args.image or args.text is None:
        raise ValueError("predict needs --image and --text (or --csv and --out)")
    prediction = _predictor(args).predict(args.image, args.text, args.method)
    print(json.dumps(prediction_json(prediction)))
    return 0


def _predict_csv(args) -> int:
    from tqdm import tqdm

    from .imaging import decode_image

    rows, fields = _read_csv(args.csv, [args.image_column, args.text_column])
    predictor = _predictor(args)
    out_fields = fields + [f for f in ("prediction", "confidence", "peak_x", "peak_y", "error") if f not in fields]
    root = args.csv.resolve().parent
    n_errors = 0
    with tqdm(total=len(rows), desc="predict", unit="row", file=sys.stderr) as bar:
        for start in range(0, len(rows), args.batch_size):
            batch = rows[start : start + args.batch_size]
            ready = []  # (row, image) pairs that decoded
            for row in batch:
                row.update(prediction="", confidence="", peak_x="", peak_y="", error="")
                try:
                    if not (row[args.text_column] or "").strip():
                        raise ValueError("the text is empty")
                    ready.append((row, decode_image(root / (row[args.image_column] or ""), name=row[args.image_column])))
                except ValueError as e:
                    row["error"] = str(e)
            if ready:
                try:
                    results = predictor.predict_batch([im for _, im in ready], [r[args.text_column] for r, _ in ready], args.method)
                except (ValueError, RuntimeError) as e:  # keep going: mark the whole batch
                    results = [None] * len(ready)
                    for row, _ in ready:
                        row["error"] = f"prediction failed: {e}"
                for (row, _), result in zip(ready, results):
                    if result is not None:
                        row.update(
                            prediction=result.label,
                            confidence=f"{result.scores[result.label]:.4f}",
                            peak_x=f"{result.explanation.peak_xy[0]:.1f}",
                            peak_y=f"{result.explanation.peak_xy[1]:.1f}",
                        )
            n_errors += sum(1 for row in batch if row["error"])
            bar.update(len(batch))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=out_fields)
        writer.writeheader()
        writer.writerows(rows)
    print(json.dumps({"rows": len(rows), "predicted": len(rows) - n_errors, "errors": n_errors, "out": str(args.out)}))
    return 0


def _read_csv(path: Path, required: list[str]) -> tuple[list[dict], list[str]]:
    if not path.is_file():
        raise ValueError(f"CSV file not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        missing = [c for c in required if c not in fields]
        if missing:
            raise ValueError(f"{path.name}: missing column(s) {missing}; expected {required}, found {fields}")
        return list(reader), fields


def _bench(args) -> int:
    from . import bench

    predictor = _predictor(args)
    print(f"benchmarking {args.checkpoint} on {predictor.device} ...", file=sys.stderr)
    print(json.dumps(bench.run(predictor, args.repeats)))
    return 0
