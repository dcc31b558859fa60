"""What several commands share: the checkpoint, device, engine and column flags, loading the
Predictor, and reading a CSV (rows with required columns, or a labelled data set)."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "sort-of-clevr"


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint folder")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")


def add_engine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=["auto", "onnxruntime", "torch"],
        default=None,
        help="serving engine (default auto: ONNX Runtime on the CPU, PyTorch on a GPU; or $MMDEMO_BACKEND)",
    )
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None, help="autocast type on a GPU")


class ColumnList(argparse.Action):
    """A column flag that may be repeated (``--label-column shape --label-column side``) or given a
    comma-separated list; the values collect in order, replacing the default."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(namespace, f"_{self.dest}_given", False)
        names = list(getattr(namespace, self.dest)) if given else []
        names += [c.strip() for c in values.split(",") if c.strip()]
        setattr(namespace, self.dest, names)
        setattr(namespace, f"_{self.dest}_given", True)


def add_columns(p: argparse.ArgumentParser, several: bool = False) -> None:
    """The column flags; ``several``: the text and label flags may name several columns (several
    texts are joined in the order given; several labels are several tasks)."""
    p.add_argument("--image-column", default="image")
    if not several:
        p.add_argument("--text-column", default="text")
        p.add_argument("--label-column", default="label")
        return
    p.add_argument(
        "--text-column",
        action=ColumnList,
        default=["text"],
        help="text column; repeat it (or give a comma-separated list) to join several, in that order",
    )
    p.add_argument(
        "--label-column",
        action=ColumnList,
        default=["label"],
        help="label column; repeat it (or give a comma-separated list) to train one model with a task per column",
    )


def load_predictor(args):
    from ..inference.predictor import Predictor

    return Predictor.from_checkpoint(
        args.checkpoint, args.device, getattr(args, "backend", None), getattr(args, "dtype", None)
    )


def read_rows(path: Path, required: list[str]) -> tuple[list[dict], list[str]]:
    """A CSV's rows as dicts and its column names; a missing file or column is a ValueError."""
    if not path.is_file():
        raise ValueError(f"CSV file not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        missing = [c for c in required if c not in fields]
        if missing:
            raise ValueError(f"{path.name}: missing column(s) {missing}; expected {required}, found {fields}")
        return list(reader), fields


def read_dataset(path: Path, args, quiet: bool = False, group_column: str | None = None):
    """The labelled data set in ``path`` read with the ``--*-column`` flags (and ``group_column``,
    the rows' sources, for a training CSV); its report on stderr."""
    from ..datasets.csv_table import read_csv

    dataset = read_csv(path, args.image_column, args.text_column, args.label_column, group_column=group_column)
    _count_truncated(dataset, args)  # the pre-flight report counts the texts cut at the token limit
    if not quiet:
        print(dataset.report(), file=sys.stderr)
    return dataset


def _count_truncated(dataset, args) -> None:
    from ..datasets.csv_table import count_truncated
    from ..model.classifier import ModelConfig
    from ..model.encoders import load_tokenizer

    text_model = getattr(args, "text_model", None) or ModelConfig.text_model
    try:
        tokenizer = load_tokenizer(text_model)
    except (OSError, ValueError):  # a text model that cannot load fails later, with its own message
        return
    count_truncated(dataset, tokenizer, ModelConfig.max_tokens)
