"""``evaluate``: accuracy, macro F1, calibration, per-class figures, slices and faithfulness on a labelled CSV
or fresh Sort-of-CLEVR scenes, optionally as an HTML report. A checkpoint of several tasks is evaluated
on each task whose column the CSV has (or on the ``--label-column``s given): the figures at the top of
the JSON are the first task's, ``tasks`` holds every task's."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..explain.methods import DEFAULT_METHOD, METHODS
from .common import add_columns, add_common, load_predictor, read_dataset, read_rows


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="accuracy, macro F1, calibration (ECE), per-class figures and confusion on a labelled CSV"
    )
    add_common(p)
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
    add_columns(p, several=True)
    p.set_defaults(func=_evaluate)


def _task_columns(args) -> tuple[list[str], list[str]]:
    """The label columns to read and the checkpoint's task each answers (evaluation/engine.py
    task_columns): the tasks' own columns unless ``--label-column`` was given."""
    from ..evaluation.engine import csv_header, task_columns
    from ..model.checkpoint import read_config

    given = args.label_column if getattr(args, "_label_column_given", False) else None
    return task_columns(csv_header(args.csv), read_config(args.checkpoint).task_names(), given)


def _task_line(name: str, report: dict, temperature: float) -> str:
    return (f"{name}accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}  ECE {report['ece']:.4f}"
            f"  (n = {report['n']}, temperature {temperature:.3f})")  # fmt: skip


def _print_classes(report: dict, indent: str = "  ") -> None:
    for label, c in report["per_class"].items():
        print(f"{indent}{label:>12}: precision {c['precision']:.3f} recall {c['recall']:.3f} f1 {c['f1']:.3f}"
              f" support {c['support']}", file=sys.stderr)  # fmt: skip


def _slices(args, dataset, predictions: list[str], column_of_label: str) -> dict:
    """Accuracy per value of each ``--slice-by`` column, over the rows with a label in ``column_of_label``."""
    from collections import defaultdict

    rows, _ = read_rows(args.csv, list(args.slice_by))
    by_row = {i + 2: row for i, row in enumerate(rows)}  # Example.row counts the header as row 1
    slices = {}
    for column in args.slice_by:
        hits = defaultdict(list)
        for example, predicted in zip(dataset.examples, predictions):
            label = example.labels.get(column_of_label, "") if example.labels else example.label
            if label:
                hits[by_row[example.row][column]].append(predicted == label)
        slices[column] = {v: {"n": len(h), "accuracy": sum(h) / len(h)} for v, h in sorted(hits.items())}
    return slices


def _evaluate(args) -> int:
    from ..model.checkpoint import load_checkpoint
    from ..training.scoring import evaluate_model

    if args.report or args.benchmark:
        return _evaluate_report(args)
    if not args.csv:
        raise ValueError("evaluate needs --csv FILE (or --benchmark N)")
    columns, tasks = _task_columns(args)
    args.label_column = columns
    dataset = read_dataset(args.csv, args)
    if not dataset.examples:
        raise ValueError(f"{args.csv.name}: no valid rows to evaluate")
    model = load_checkpoint(args.checkpoint)
    names = model.config.task_names()
    several = tasks != names[:1]
    report = evaluate_model(model, dataset.examples, args.device, tasks=dict(zip(columns, tasks)) if several else None)
    predictions = report.pop("predictions")
    report.pop("confidences")
    if args.slice_by:
        report["slices"] = _slices(args, dataset, predictions, columns[0])
    temperatures = dict(zip(names, model.config.task_temperatures()))
    if not several:
        print(_task_line("", report, model.config.temperature), file=sys.stderr)
        _print_classes(report)
    for (column, task), figures in zip(zip(columns, tasks), report.get("tasks", {}).values()):
        figures.pop("confidences")
        task_predictions = figures.pop("predictions")
        if args.slice_by:
            figures["slices"] = _slices(args, dataset, task_predictions, column)
        print(_task_line(f"{task}: ", figures, temperatures[task]), file=sys.stderr)
        _print_classes(figures, "    ")
    for column, values in report.get("slices", {}).items():
        for value, s in values.items():
            print(f"  {column}={value}: accuracy {s['accuracy']:.4f} (n = {s['n']})", file=sys.stderr)
    pairs = [(e.image, e.text) for e in dataset.examples]
    report["faithfulness"] = _faithfulness(args, load_predictor(args) if args.faithfulness_rows > 0 else None, pairs)
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


def _evaluate_report(args) -> int:
    """Evaluate row by row through the Predictor (as batch predict does), optionally writing
    the HTML report; prints the summary as the last line."""
    import tempfile

    from ..evaluation import engine as evalset

    if bool(args.csv) == bool(args.benchmark):
        raise ValueError("evaluate needs either --csv FILE or --benchmark N")
    with tempfile.TemporaryDirectory(prefix="mmdemo-benchmark-") as scratch:
        if args.csv:
            from ..model.checkpoint import read_config

            given = args.label_column if getattr(args, "_label_column_given", False) else None
            names = read_config(args.checkpoint).task_names()
            data = evalset.load_csv_set(
                args.csv, None, None, args.image_column, args.text_column, given, task_names=names
            )
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
    predictor = load_predictor(args)
    with tqdm(total=len(data.examples), desc="evaluate", unit="row", file=sys.stderr) as bar:
        result = evalset.evaluate(
            predictor, data, args.checkpoint.name, args.method, progress=lambda done, _: bar.update(done - bar.n)
        )
    summary = evalset.summarize(result)
    out = {k: summary[k] for k in ("n", "accuracy", "macro_f1", "ece", "per_class", "rows_rejected")}
    out["confusion"] = {k: summary["confusion"][k] for k in ("labels", "matrix")}
    if "pointing" in summary:
        out["pointing"] = summary["pointing"]
    if summary.get("tasks"):
        keys = ("n", "accuracy", "macro_f1", "ece", "per_class", "calibration")
        out["tasks"] = {
            task: {**{k: s[k] for k in keys}, "confusion": {k: s["confusion"][k] for k in ("labels", "matrix")}}
            for task, s in summary["tasks"].items()
        }
        for task, s in out["tasks"].items():
            print(f"{task}: accuracy {s['accuracy']:.4f}  macro-F1 {s['macro_f1']:.4f}  ECE {s['ece']:.4f}"
                  f"  (n = {s['n']})", file=sys.stderr)  # fmt: skip
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
