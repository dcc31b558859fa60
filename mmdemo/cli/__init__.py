"""The command line, ``python -m mmdemo COMMAND``: the parser and ``main``; each command's flags and
handler live in the module of its group (predict, train, evaluate, audit, add_classes, data, bench, similar).

Results go to stdout as JSON (one object, on the last line; ``similar``: one per line); progress and messages to
stderr.
"""

from __future__ import annotations

import argparse
import sys

from . import add_classes, audit, bench, data, evaluate, predict, similar, train

# in the order ``python -m mmdemo --help`` lists them
COMMANDS = (
    predict.add_predict,
    similar.add_similar,
    bench.add_bench,
    predict.add_export,
    train.add_train,
    evaluate.add_evaluate,
    audit.add_audit,
    add_classes.add_add_classes,
    train.add_fit_scope,
    similar.add_index_similar,
    data.add_make_sort_of_clevr,
    data.add_make_real_benchmark,
    bench.add_bench_app,
    bench.add_stress,
    bench.add_bench_sort_of_clevr,
    bench.add_bench_scope,
    bench.add_bench_train,
    bench.add_bench_contrastive,
    audit.add_bench_audit,
    add_classes.add_bench_add_classes,
    similar.add_bench_similar,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mmdemo", description="Multimodal (image + text) classifier")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileExistsError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
