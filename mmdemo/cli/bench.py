"""The developer benchmarks: ``bench`` (a checkpoint's speed), ``bench-app`` (the app over HTTP, or
/predict's stages), ``stress`` (the shared-server load test), ``bench-sort-of-clevr`` and
``bench-scope``, ``bench-train`` (training steps on cached features), ``bench-contrastive`` (an A/B of
the contrastive loss). Each prints its figures as one JSON object on the last stdout line; the code that
measures is in mmdemo/benchmarks/."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import DEFAULT_CHECKPOINT, add_common, add_engine, load_predictor


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="speed figures of a checkpoint on this machine")
    add_common(p)
    add_engine(p)
    p.add_argument("--repeats", type=int, default=100)
    p.add_argument(
        "--compare", action="store_true", help="also time the candidate fast paths (ONNX Runtime, int8, jit)"
    )
    p.add_argument("--compile", action="store_true", help="with --compare: also torch.compile (minutes on a CPU)")
    p.set_defaults(func=_bench)


def add_bench_app(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=_bench_app)


def add_stress(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stress", help="shared-server load test: burst, soak, a huge question (one JSON line)")
    p.add_argument("--image", type=Path, default=DEFAULT_CHECKPOINT / "examples" / "scene_4.png")
    p.add_argument("--burst", type=int, default=100, help="simultaneous /predict calls (0: skip)")
    p.add_argument("--soak-minutes", type=float, default=1.0, help="steady load duration (the goal: 10; 0: skip)")
    p.add_argument("--rate", type=float, default=4.0, help="requests per second during the soak")
    p.add_argument("--question-mb", type=float, default=50.0, help="size of the huge question (0: skip)")
    p.set_defaults(func=_stress)


def add_bench_sort_of_clevr(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-sort-of-clevr", help="accuracy per question type and heatmap pointing on fresh scenes")
    add_common(p)
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
    p.set_defaults(func=_bench_sort_of_clevr)


def add_bench_scope(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-scope", help="out-of-scope flag rates on in-scope and out-of-scope sets")
    add_common(p)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--seed", type=int, default=4242)
    p.set_defaults(func=_bench_scope)


def add_bench_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench-train", help="training speed on cached features: samples/s of a training step at each image size"
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224], help="image sizes in pixels")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="timed steps per size (the median is reported)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--region-pool", type=int, default=1, choices=[1, 2, 3, 4], help="as train --region-pool")
    p.set_defaults(func=_bench_train)


def add_bench_contrastive(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench-contrastive",
        help="A/B of train --contrastive W on real-data benchmarks: test accuracy and ECE per weight",
    )
    p.add_argument(
        "--kinds", nargs="+", choices=["digits", "photo-patches", "photo-crops"], default=["digits", "photo-crops"]
    )
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.1, 0.5], help="contrastive weights (0: without)")
    p.add_argument("--epochs", type=int, default=8, help="epochs of every arm (fixed, so every arm does the same work)")
    p.add_argument("--seed", type=int, default=0, help="training seed of every arm")
    p.add_argument(
        "--data-seed", type=int, default=0, help="seed of the benchmark data (its split into train and test)"
    )
    p.add_argument("--workdir", type=Path, default=Path("data/bench-contrastive"), help="data and checkpoints")
    p.add_argument(
        "--step-overhead",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time a training step on cached features with and without the loss (1 thread)",
    )
    p.set_defaults(func=_bench_contrastive)


def _bench_contrastive(args) -> int:
    from ..benchmarks.contrastive import contrastive_ab, step_overhead, table

    if args.epochs < 1 or any(w < 0 for w in args.weights):
        raise ValueError("--epochs must be at least 1 and every --weights value at least 0")
    result = contrastive_ab(
        args.kinds, args.weights, args.epochs, args.seed, args.workdir, lambda line: print(line, file=sys.stderr),
        args.data_seed,
    )  # fmt: skip
    print(table(result["arms"]), file=sys.stderr)
    if args.step_overhead:
        result["step_overhead"] = step_overhead()
        for f in result["step_overhead"]:
            print(
                f"{f['image_size']} px step: {f['step_ms']} ms, {f['step_ms_with_loss']} ms with the loss",
                file=sys.stderr,
            )
    print(json.dumps(result))
    return 0


def _bench_train(args) -> int:
    import os

    from ..benchmarks.training_speed import step_samples_per_s

    figures = []
    for size in args.sizes:
        if not 16 <= size <= 1024:
            raise ValueError(f"--sizes: {size} px is outside 16..1024")
        figures.append(
            step_samples_per_s(size, args.batch_size, args.steps, args.threads, region_pool=args.region_pool)
        )
        print(
            f"{size} px: {figures[-1]['samples_per_s']} samples/s ({figures[-1]['regions']} regions)", file=sys.stderr
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps({"load_average": load, "sizes": figures}))
    return 0


def _bench(args) -> int:
    from ..benchmarks import speed as bench

    predictor = load_predictor(args)
    print(f"benchmarking {args.checkpoint} on {predictor.device} ...", file=sys.stderr)
    print(json.dumps(bench.run(predictor, args.repeats, args.compare, args.compile)))
    return 0


def _bench_app(args) -> int:
    if args.stages:
        from ..benchmarks.stages import stages

        print(json.dumps(stages(args.stages)))
        return 0
    from ..benchmarks.app_speed import run

    print(json.dumps(run(args.image, args.text, args.repeats, args.clients)))
    return 0


def _stress(args) -> int:
    from ..benchmarks.stress import run

    print(json.dumps(run(args.image, args.burst, args.soak_minutes, args.rate, args.question_mb)))
    return 0


def _bench_sort_of_clevr(args) -> int:
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


def _bench_scope(args) -> int:
    from ..benchmarks.scope import scope_benchmark, scope_table

    result = scope_benchmark(args.checkpoint, args.images, args.seed, args.device)
    print(scope_table(result), file=sys.stderr)
    print(json.dumps(result))
    return 0
