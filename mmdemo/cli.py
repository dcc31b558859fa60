"""Command line: ``python -m mmdemo {predict,bench,...}``.

Results go to stdout as JSON (one object, on the last line); progress and messages to stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from .explain import DEFAULT_METHOD, METHODS

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
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD, help="explanation method")

    p = sub.add_parser("bench", help="speed figures of a checkpoint on this machine")
    _add_common(p)
    p.add_argument("--repeats", type=int, default=100)

    p = sub.add_parser("train", help="train or fine-tune on a CSV (image,text,label)")
    p.add_argument("--csv", type=Path, required=True, help="training CSV; image paths relative to its folder")
    p.add_argument("--val-csv", type=Path, help="validation CSV (default: hold out --val-split of the images)")
    p.add_argument("--val-split", type=float, default=0.1)
    p.add_argument("--out", type=Path, required=True, help="folder for the new checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--init", type=Path, help="start from this checkpoint (default: a new model)")
    p.add_argument("--time-limit", type=float, help="stop after this many minutes (the best epoch so far is kept)")
    _add_columns(p)
    _add_train_settings(p)
    _add_architecture(p)
    p.add_argument("--device", default=None)

    p = sub.add_parser("evaluate", help="accuracy, macro F1, per-class figures and confusion on a labelled CSV")
    _add_common(p)
    p.add_argument("--csv", type=Path, help="labelled CSV (image,text,label; paths relative to the CSV)")
    _add_columns(p)
    p.add_argument("--report", type=Path, help="write a self-contained HTML evaluation report here")
    p.add_argument("--benchmark", type=int, metavar="N", help="evaluate on N fresh Sort-of-CLEVR scenes, not a CSV")
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD, help="explanation method (with --report)")

    p = sub.add_parser("make-sort-of-clevr", help="generate a Sort-of-CLEVR dataset (images + data.csv)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phrasing", choices=("train", "canonical", "held-out"), default="train")

    p = sub.add_parser("bench-app", help="app start-up to first answer and /predict latency over HTTP")
    p.add_argument("--image", type=Path, default=DEFAULT_CHECKPOINT / "examples" / "scene_4.png")
    p.add_argument("--text", default="What shape is the object closest to the orange object?")
    p.add_argument("--repeats", type=int, default=50)

    p = sub.add_parser("bench-sort-of-clevr", help="accuracy per question type and heatmap pointing on fresh scenes")
    _add_common(p)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--workdir", type=Path, default=Path("data/bench-sort-of-clevr"))
    return parser


def _add_columns(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-column", default="image")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")


def _add_train_settings(p: argparse.ArgumentParser) -> None:
    from .train import TrainSettings

    d = TrainSettings()
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="rows per step")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate of the fusion and head")
    p.add_argument("--encoder-lr", type=float, default=d.encoder_lr, help="learning rate of trained encoders")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument(
        "--freeze",
        nargs="*",
        default=d.freeze,
        choices=["image_encoder", "text_encoder"],
        help="encoders to keep frozen (default: both; '--freeze' alone trains both)",
    )
    p.add_argument("--modality-dropout", type=float, default=d.modality_dropout)
    p.add_argument("--class-weights", action="store_true", help="weight the loss by inverse class frequency")
    p.add_argument("--seed", type=int, default=d.seed)


def _add_architecture(p: argparse.ArgumentParser) -> None:
    """Architecture of a new model (ignored with --init, whose config is kept)."""
    from .model import ModelConfig

    d = ModelConfig(labels=["a", "b"])
    p.add_argument("--image-encoder", default=d.image_encoder, choices=["efficientnet_lite0", "small_cnn"])
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--image-stride", type=int, default=d.image_stride, choices=[16, 32])
    p.add_argument("--text-encoder", default=d.text_encoder, choices=["minilm", "gru"])
    p.add_argument("--text-model", default=d.text_model, help="'minilm' (packaged) or a folder / hub id")
    p.add_argument("--fusion-dim", type=int, default=d.fusion_dim)
    p.add_argument("--fusion-heads", type=int, default=d.fusion_heads)
    p.add_argument("--fusion-layers", type=int, default=d.fusion_layers)
    p.add_argument("--region-layers", type=int, default=d.region_layers)
    p.add_argument("--dropout", type=float, default=d.dropout)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "predict":
            return _predict(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "train":
            return _train(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "make-sort-of-clevr":
            from .sortofclevr import generate

            path = generate(args.out, args.images, args.seed, args.phrasing)
            print(json.dumps({"csv": str(path), "images": args.images, "rows": args.images * 20}))
            return 0
        if args.command == "bench-app":
            from .bench_app import run

            print(json.dumps(run(args.image, args.text, args.repeats)))
            return 0
        if args.command == "bench-sort-of-clevr":
            from .evaluation import sort_of_clevr_benchmark

            print(
                json.dumps(sort_of_clevr_benchmark(args.checkpoint, args.images, args.seed, args.workdir, args.device))
            )
            return 0
    except (ValueError, FileExistsError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1


def _predictor(args):
    from .service import Predictor

    return Predictor.from_checkpoint(args.checkpoint, args.device)


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
    print(json.dumps(prediction.to_json()))
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
                    ready.append(
                        (row, decode_image(root / (row[args.image_column] or ""), name=row[args.image_column]))
                    )
                except ValueError as e:
                    row["error"] = str(e)
            if ready:
                try:
                    results = predictor.predict_batch(
                        [im for _, im in ready], [r[args.text_column] for r, _ in ready], args.method
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


def _read_dataset(path: Path, args):
    from .data import read_csv

    dataset = read_csv(path, args.image_column, args.text_column, args.label_column)
    print(dataset.report(), file=sys.stderr)
    return dataset


def _train(args) -> int:
    import shlex

    from tqdm import tqdm

    from .finetune import FinetuneRequest, finetune
    from .model import ModelConfig
    from .train import TrainSettings

    if args.out.exists() and not args.overwrite:
        raise ValueError(f"{args.out} already exists (pass --overwrite to replace it)")
    dataset = _read_dataset(args.csv, args)
    val = _read_dataset(args.val_csv, args) if args.val_csv else None
    settings = TrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        encoder_lr=args.encoder_lr,
        weight_decay=args.weight_decay,
        freeze=list(args.freeze),
        modality_dropout=args.modality_dropout,
        class_weights=args.class_weights,
        seed=args.seed,
        device=args.device,
    )
    config = None
    if args.init is None:
        config = ModelConfig(
            labels=dataset.labels,
            image_encoder=args.image_encoder,
            image_size=args.image_size,
            image_stride=args.image_stride,
            text_encoder=args.text_encoder,
            text_model=args.text_model,
            fusion_dim=args.fusion_dim,
            fusion_heads=args.fusion_heads,
            fusion_layers=args.fusion_layers,
            region_layers=args.region_layers,
            dropout=args.dropout,
        )
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
        elif stage == "epoch":
            if event["epoch"] in bars:
                bars[event["epoch"]].close()
            print(
                json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in event.items()}), file=sys.stderr
            )

    request = FinetuneRequest(
        dataset=dataset,
        out=args.out,
        settings=settings,
        val_dataset=val,
        val_fraction=args.val_split,
        init=args.init,
        config=config,
        time_limit_s=args.time_limit * 60 if args.time_limit else None,
        overwrite=args.overwrite,
        command="python -m mmdemo " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    result = finetune(request, progress)
    record = result.record
    summary = {
        "checkpoint": str(result.checkpoint),
        "best_epoch": record["best_epoch"],
        "seconds": record["train_seconds"],
        "stopped_by": record["stopped_by"],
        **record["metrics"],
    }
    print(json.dumps(summary))
    return 0


def _evaluate(args) -> int:
    from .checkpoint import load_checkpoint
    from .train import evaluate_model

    if args.report or args.benchmark:
        return _evaluate_report(args)
    if not args.csv:
        raise ValueError("evaluate needs --csv FILE (or --benchmark N)")
    dataset = _read_dataset(args.csv, args)
    if not dataset.examples:
        raise ValueError(f"{args.csv.name}: no valid rows to evaluate")
    model = load_checkpoint(args.checkpoint)
    report = evaluate_model(model, dataset.examples, args.device)
    report.pop("predictions")
    print(json.dumps(report))
    return 0


def _evaluate_report(args) -> int:
    """Evaluate row by row through the Predictor (as batch predict does), optionally writing
    the HTML report; prints the summary as the last line."""
    import tempfile

    from . import evalset

    if bool(args.csv) == bool(args.benchmark):
        raise ValueError("evaluate needs either --csv FILE or --benchmark N")
    with tempfile.TemporaryDirectory(prefix="mmdemo-benchmark-") as scratch:
        if args.csv:
            data = evalset.load_csv_set(args.csv, None, None, args.image_column, args.text_column, args.label_column)
        else:
            data = evalset.benchmark_set(scratch, args.benchmark)
        return _evaluate_set(args, data)


def _evaluate_set(args, data) -> int:
    from tqdm import tqdm

    from . import evalset, report
    from .ratings import RatingStore, data_dir

    print(data.report, file=sys.stderr)
    with tqdm(total=len(data.examples), desc="evaluate", unit="row", file=sys.stderr) as bar:
        result = evalset.evaluate(
            _predictor(args), data, args.checkpoint.name, args.method, progress=lambda done, _: bar.update(done - bar.n)
        )
    summary = evalset.summarize(result)
    out = {k: summary[k] for k in ("n", "accuracy", "macro_f1", "ece", "per_class", "rows_rejected")}
    out["confusion"] = {k: summary["confusion"][k] for k in ("labels", "matrix")}
    if "pointing" in summary:
        out["pointing"] = summary["pointing"]
    if args.report:
        ratings = RatingStore(data_dir()).summary()
        card = args.checkpoint / "README.md"
        html = report.build_report(
            result, card.read_text() if card.is_file() else "", ratings, report.recorded_faithfulness(args.checkpoint)
        )
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(html, encoding="utf-8")
        out["report"] = str(args.report)
    print(json.dumps(out))
    return 0
