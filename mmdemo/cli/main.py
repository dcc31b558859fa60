"""Command line: ``python -m mmdemo {predict,bench,...}``.

Results go to stdout as JSON (one object, on the last line); progress and messages to stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from ..explain.methods import DEFAULT_METHOD, METHODS

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "sort-of-clevr"


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint folder")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")


def _add_engine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=["auto", "onnxruntime", "torch"],
        default=None,
        help="serving engine (default auto: ONNX Runtime on the CPU, PyTorch on a GPU; or $MMDEMO_BACKEND)",
    )
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None, help="autocast type on a GPU")


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
    _add_engine(p)

    p = sub.add_parser("bench", help="speed figures of a checkpoint on this machine")
    _add_common(p)
    _add_engine(p)
    p.add_argument("--repeats", type=int, default=100)
    p.add_argument(
        "--compare", action="store_true", help="also time the candidate fast paths (ONNX Runtime, int8, jit)"
    )
    p.add_argument("--compile", action="store_true", help="with --compare: also torch.compile (minutes on a CPU)")

    p = sub.add_parser("export", help="write a checkpoint's whole model to ONNX")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint folder")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", type=Path, required=True, help="the .onnx file to write")

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
    _add_columns(p)
    _add_train_settings(p)
    _add_architecture(p)
    p.add_argument("--device", default=None)

    p = sub.add_parser(
        "evaluate", help="accuracy, macro F1, calibration (ECE), per-class figures and confusion on a labelled CSV"
    )
    _add_common(p)
    p.add_argument("--csv", type=Path, help="labelled CSV (image,text,label; paths relative to the CSV)")
    p.add_argument("--report", type=Path, help="write a self-contained HTML evaluation report here")
    p.add_argument("--benchmark", type=int, metavar="N", help="evaluate on N fresh Sort-of-CLEVR scenes, not a CSV")
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD, help="explanation method (with --report)")
    p.add_argument("--slice-by", nargs="*", default=[], metavar="COLUMN", help="also report accuracy per value")
    p.add_argument(
        "--faithfulness-rows",
        type=int,
        default=8,
        metavar="N",
        help="measure both explanation methods' faithfulness on N rows spread over the set (0: skip)",
    )
    _add_columns(p)

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
    _add_columns(p)

    p = sub.add_parser("make-sort-of-clevr", help="generate a Sort-of-CLEVR dataset (images + data.csv)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phrasing", choices=("train", "canonical", "held-out"), default="train")

    p = sub.add_parser(
        "make-real-benchmark", help="real-data benchmark CSVs (sklearn digit scans, scikit-image photo patches)"
    )
    p.add_argument("--kind", choices=("digits", "photo-patches"), required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baselines", action="store_true", help="also score pixel baselines (logistic regression, SVM)")

    p = sub.add_parser("bench-app", help="app start-up to first answer and /predict latency over HTTP")
    p.add_argument("--image", type=Path, help="image of the start-up request (default: the first varied scene)")
    p.add_argument("--text", help="question of the start-up request")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--clients", type=int, nargs="*", default=[1, 4, 16], help="concurrent clients for the table")
    p.add_argument(
        "--stages",
        type=int,
        metavar="N",
        help="instead: where /predict's time goes, stage by stage, over N calls of its handler in this process",
    )

    p = sub.add_parser("stress", help="shared-server load test: burst, soak, a huge question (one JSON line)")
    p.add_argument("--image", type=Path, default=DEFAULT_CHECKPOINT / "examples" / "scene_4.png")
    p.add_argument("--burst", type=int, default=100, help="simultaneous /predict calls (0: skip)")
    p.add_argument("--soak-minutes", type=float, default=1.0, help="steady load duration (the goal: 10; 0: skip)")
    p.add_argument("--rate", type=float, default=4.0, help="requests per second during the soak")
    p.add_argument("--question-mb", type=float, default=50.0, help="size of the huge question (0: skip)")

    p = sub.add_parser("bench-sort-of-clevr", help="accuracy per question type and heatmap pointing on fresh scenes")
    _add_common(p)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--workdir", type=Path, default=Path("data/bench-sort-of-clevr"))
    p.add_argument(
        "--parts",
        nargs="+",
        choices=["accuracy", "calibration", "pointing", "faithfulness"],
        default=["accuracy", "calibration", "pointing", "faithfulness"],
        help="which figures to measure (default: all)",
    )
    p.add_argument(
        "--faithfulness-rows", type=int, default=100, metavar="N", help="questions measured for faithfulness"
    )

    p = sub.add_parser("bench-scope", help="out-of-scope flag rates on in-scope and out-of-scope sets")
    _add_common(p)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--seed", type=int, default=4242)
    return parser


def _add_columns(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-column", default="image")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")


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
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--stage2-blocks",
        type=int,
        help="after stage 1, also train this many top blocks of the frozen image encoder when the time left"
        " allows (default: 3 for a pretrained EfficientNet-Lite0; 0: one stage only)",
    )


TRAIN_SETTING_FLAGS = (
    "epochs", "batch_size", "lr", "encoder_lr", "weight_decay", "freeze", "modality_dropout", "class_weights",
    "patience", "seed", "stage2_blocks",
)  # fmt: skip
ARCHITECTURE_FLAGS = (
    "image_encoder", "image_size", "image_stride", "text_encoder", "text_model", "fusion_dim", "fusion_heads",
    "fusion_layers", "region_layers", "dropout",
)  # fmt: skip


def _add_architecture(p: argparse.ArgumentParser) -> None:
    """Architecture of a new model (ignored with --init, whose config is kept); None = default."""
    p.add_argument("--image-encoder", choices=["efficientnet_lite0", "small_cnn"])
    p.add_argument("--image-size", type=int, help="default: from the data (64 px for small scans, 224 for photos)")
    p.add_argument("--image-stride", type=int, choices=[16, 32])
    p.add_argument("--text-encoder", choices=["minilm", "gru"])
    p.add_argument("--text-model", help="'minilm' (packaged) or a folder / hub id")
    p.add_argument("--fusion-dim", type=int)
    p.add_argument("--fusion-heads", type=int)
    p.add_argument("--fusion-layers", type=int)
    p.add_argument("--region-layers", type=int)
    p.add_argument("--dropout", type=float)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "predict":
            return _predict(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "export":
            return _export(args)
        if args.command == "train":
            return _train(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "bench-scope":
            from ..benchmarks.sort_of_clevr import scope_benchmark, scope_table

            result = scope_benchmark(args.checkpoint, args.images, args.seed, args.device)
            print(scope_table(result), file=sys.stderr)
            print(json.dumps(result))
            return 0
        if args.command == "fit-scope":
            return _fit_scope(args)
        if args.command == "make-sort-of-clevr":
            from ..datasets.sortofclevr import generate

            path = generate(args.out, args.images, args.seed, args.phrasing)
            print(json.dumps({"csv": str(path), "images": args.images, "rows": args.images * 20}))
            return 0
        if args.command == "make-real-benchmark":
            return _make_real_benchmark(args)
        if args.command == "bench-app" and args.stages:
            from ..benchmarks.stages import stages

            print(json.dumps(stages(args.stages)))
            return 0
        if args.command == "bench-app":
            from ..benchmarks.app_speed import run

            print(json.dumps(run(args.image, args.text, args.repeats, args.clients)))
            return 0
        if args.command == "stress":
            from ..benchmarks.stress import main as stress

            return stress(args)
        if args.command == "bench-sort-of-clevr":
            from ..benchmarks.sort_of_clevr import sort_of_clevr_benchmark

            result = sort_of_clevr_benchmark(
                args.checkpoint,
                args.images,
                args.seed,
                args.workdir,
                args.device,
                tuple(args.parts),
                args.faithfulness_rows,
            )
            print(json.dumps(result))
            return 0
    except (ValueError, FileExistsError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1


def _make_real_benchmark(args) -> int:
    from ..datasets import real as realbench

    make = realbench.make_digits if args.kind == "digits" else realbench.make_photo_patches
    result = make(args.out, seed=args.seed)
    if args.baselines:
        result["baselines"] = realbench.baselines(Path(result["train"]), Path(result["test"]))
    print(json.dumps(result))
    return 0


def _predictor(args):
    from ..inference.predictor import Predictor

    return Predictor.from_checkpoint(
        args.checkpoint, args.device, getattr(args, "backend", None), getattr(args, "dtype", None)
    )


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

    from ..imaging import decode_image

    rows, fields = _read_csv(args.csv, [args.image_column, args.text_column])
    rank, world = _distributed_rank()
    predictor = _predictor(args)
    scope_fields = ("in_scope", "scope_reasons", "image_distance", "text_similarity", "image_reliance")
    out_fields = fields + [
        f for f in ("prediction", "confidence", *scope_fields, "peak_x", "peak_y", "error") if f not in fields
    ]
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
                row.update({f: "" for f in scope_fields[1:]})
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
                            in_scope="true" if result.in_scope else "false",
                            scope_reasons=" ".join(result.scope["reasons"]),
                            image_distance=result.scope.get("image_distance", ""),
                            text_similarity=result.scope.get("text_similarity", ""),
                            image_reliance=result.scope.get("image_reliance", ""),
                            peak_x=f"{result.explanation.peak_xy[0]:.1f}",
                            peak_y=f"{result.explanation.peak_xy[1]:.1f}",
                        )
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
    from ..benchmarks import speed as bench

    predictor = _predictor(args)
    print(f"benchmarking {args.checkpoint} on {predictor.device} ...", file=sys.stderr)
    print(json.dumps(bench.run(predictor, args.repeats, args.compare, args.compile)))
    return 0


def _export(args) -> int:
    from ..inference.export import export_onnx
    from ..model.checkpoint import load_checkpoint

    print(json.dumps(export_onnx(load_checkpoint(args.checkpoint), args.out)))
    return 0


def _read_dataset(path: Path, args, quiet: bool = False):
    from ..datasets.csv_table import read_csv

    dataset = read_csv(path, args.image_column, args.text_column, args.label_column)
    if not quiet:
        print(dataset.report(), file=sys.stderr)
    return dataset


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
        dataset = _read_dataset(args.csv, args, quiet=rank > 0)
        val = _read_dataset(args.val_csv, args, quiet=rank > 0) if args.val_csv else None
        overrides = {
            k: getattr(args, k) for k in TRAIN_SETTING_FLAGS + ARCHITECTURE_FLAGS if getattr(args, k) is not None
        }
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
    }
    print(json.dumps(summary))
    return 0


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
        elif stage == "epoch":
            if event["epoch"] in bars:
                bars[event["epoch"]].close()
            print(
                json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in event.items()}), file=sys.stderr
            )

    return progress


def _evaluate(args) -> int:
    from collections import defaultdict

    from ..model.checkpoint import load_checkpoint
    from ..training.loop import evaluate_model

    if args.report or args.benchmark:
        return _evaluate_report(args)
    if not args.csv:
        raise ValueError("evaluate needs --csv FILE (or --benchmark N)")
    dataset = _read_dataset(args.csv, args)
    if not dataset.examples:
        raise ValueError(f"{args.csv.name}: no valid rows to evaluate")
    model = load_checkpoint(args.checkpoint)
    report = evaluate_model(model, dataset.examples, args.device)
    predictions = report.pop("predictions")
    report.pop("confidences")
    if args.slice_by:
        rows, _ = _read_csv(args.csv, list(args.slice_by))
        by_row = {i + 2: row for i, row in enumerate(rows)}  # Example.row counts the header as row 1
        report["slices"] = {}
        for column in args.slice_by:
            hits = defaultdict(list)
            for example, predicted in zip(dataset.examples, predictions):
                hits[by_row[example.row][column]].append(predicted == example.label)
            report["slices"][column] = {v: {"n": len(h), "accuracy": sum(h) / len(h)} for v, h in sorted(hits.items())}
    print(f"accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}  ECE {report['ece']:.4f}"
          f"  (n = {report['n']}, temperature {model.config.temperature:.3f})", file=sys.stderr)  # fmt: skip
    for label, c in report["per_class"].items():
        print(f"  {label:>12}: precision {c['precision']:.3f} recall {c['recall']:.3f} f1 {c['f1']:.3f}"
              f" support {c['support']}", file=sys.stderr)  # fmt: skip
    for column, values in report.get("slices", {}).items():
        for value, s in values.items():
            print(f"  {column}={value}: accuracy {s['accuracy']:.4f} (n = {s['n']})", file=sys.stderr)
    pairs = [(e.image, e.text) for e in dataset.examples]
    report["faithfulness"] = _faithfulness(args, _predictor(args) if args.faithfulness_rows > 0 else None, pairs)
    print(json.dumps(report))
    return 0


def _faithfulness(args, predictor, pairs) -> dict | None:
    """Both explanation methods' faithfulness on --faithfulness-rows rows of the set (None: skipped)."""
    from ..evaluation.engine import faithfulness

    if args.faithfulness_rows <= 0:
        return None
    result = faithfulness(args.checkpoint, predictor, pairs, args.faithfulness_rows)
    for method, f in result.items():
        if isinstance(f, dict):
            print(f"  faithfulness ({method}, {result['rows']} rows): deletion area {f['deletion_auc']:.4f}"
                  f" (random order {f['random_deletion_auc']:.4f}), insertion area {f['insertion_auc']:.4f},"
                  f" rank correlation with re-initialised fusion {f['randomisation_rank_correlation']:.4f}",
                  file=sys.stderr)  # fmt: skip
    return result


def _fit_scope(args) -> int:
    import torch

    from ..device import resolve_device
    from ..inference.scope import fit_scope, load_scope, reliance_floor, sample_rows, save_scope, write_config
    from ..model.checkpoint import load_checkpoint, update_training_record
    from ..training.calibration import calibration_report, fit_temperature

    train = _read_dataset(args.csv, args)
    val = _read_dataset(args.val_csv, args)
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


def _evaluate_report(args) -> int:
    """Evaluate row by row through the Predictor (as batch predict does), optionally writing
    the HTML report; prints the summary as the last line."""
    import tempfile

    from ..evaluation import engine as evalset

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

    from ..app.settings import data_dir
    from ..evaluation import engine as evalset
    from ..evaluation import report
    from ..evaluation.ratings import RatingStore

    print(data.report, file=sys.stderr)
    predictor = _predictor(args)
    with tqdm(total=len(data.examples), desc="evaluate", unit="row", file=sys.stderr) as bar:
        result = evalset.evaluate(
            predictor, data, args.checkpoint.name, args.method, progress=lambda done, _: bar.update(done - bar.n)
        )
    summary = evalset.summarize(result)
    out = {k: summary[k] for k in ("n", "accuracy", "macro_f1", "ece", "per_class", "rows_rejected")}
    out["confusion"] = {k: summary["confusion"][k] for k in ("labels", "matrix")}
    if "pointing" in summary:
        out["pointing"] = summary["pointing"]
    out["faithfulness"] = _faithfulness(args, predictor, [(r.image, r.text) for r in result.rows])
    if args.report:
        ratings = RatingStore(data_dir()).summary()
        card = args.checkpoint / "README.md"
        html = report.build_report(
            result,
            card.read_text() if card.is_file() else "",
            ratings,
            out["faithfulness"],
            recorded=report.recorded_faithfulness(args.checkpoint),
        )
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(html, encoding="utf-8")
        out["report"] = str(args.report)
    print(json.dumps(out))
    return 0
