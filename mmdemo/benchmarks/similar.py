"""``bench-similar``: do a model's most similar training rows share a new row's label?

On the digit scans (``make-real-benchmark --kind digits``): train with the default recipe and a
time limit (the index is built by the training run itself), then for every held-out test row
ask the index for its k most similar training rows and count how many carry the test row's true
label. Also: the index's size and build time, the time per query, and how well the stored
64-dimensional reduction keeps the neighbours the full vectors give (top-k overlap).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from ..datasets.csv_table import read_csv
from ..datasets.real import make_digits
from ..device import resolve_device
from ..imaging import decode_image
from ..inference.similar import INDEX_JSON, INDEX_TENSORS, joint_vectors, load_index
from ..model.checkpoint import load_checkpoint
from ..training.finetune import FinetuneRequest, finetune
from ..training.similar_fit import index_rows, training_vectors

QUERY_BATCH = 64


def bench_similar(
    data: Path, workdir: Path, checkpoint: Path | None = None, time_limit_min: float = 5.0, k: int = 5,
    device: str | None = None,
) -> dict:  # fmt: skip
    """Figures of the similar-examples index on the digit scans in ``data`` (written there first
    when missing); trains into ``workdir/model`` unless ``checkpoint`` is given."""
    data, workdir = Path(data), Path(workdir)
    if not (data / "train.csv").is_file():
        make_digits(data)
    train_set, test_set = read_csv(data / "train.csv"), read_csv(data / "test.csv")
    result: dict = {"data": str(data), "train_rows": len(train_set.examples), "test_rows": len(test_set.examples)}
    if checkpoint is None:
        checkpoint = workdir / "model"
        started = time.perf_counter()
        finetune(
            FinetuneRequest(
                train_set, checkpoint, time_limit_s=time_limit_min * 60, overwrite=True,
                command=f"python -m mmdemo train --csv {data / 'train.csv'} --out {checkpoint} --time-limit {time_limit_min:g}",
            ),
            _epochs_to_stderr,
        )  # fmt: skip
        result["train_seconds"] = round(time.perf_counter() - started, 1)
    index = load_index(checkpoint)
    if index is None:
        raise ValueError(f"checkpoint {checkpoint.name!r} has no similar-examples index")
    model = load_checkpoint(checkpoint, resolve_device(device))
    result["index"] = {
        "rows": len(index),
        "dims": int(index.vectors.shape[1]),
        "bytes": sum((checkpoint / name).stat().st_size for name in (INDEX_TENSORS, INDEX_JSON)),
        "thumbnails": len(index.thumbnails),
    }
    # the build alone, timed again on the loaded model (in a run it follows the out-of-scope fit)
    started = time.perf_counter()
    index_rows(model, index_training_rows(train_set, index), data, device)
    result["index"]["build_seconds"] = round(time.perf_counter() - started, 1)

    started = time.perf_counter()
    queries = _query_vectors(model, test_set.examples)
    query_seconds = time.perf_counter() - started
    scores = index.similarities(queries)  # (Q, N)
    top = scores.topk(k, dim=-1).indices  # (Q, k)
    row_labels = [index.labels[i] for i in index.row_label.tolist()]
    truth = [e.label for e in test_set.examples]
    shared = torch.tensor([[row_labels[j] == t for j in row] for t, row in zip(truth, top.tolist())])  # (Q, k)
    votes = [max(set(labels), key=labels.count) for labels in ([row_labels[j] for j in row] for row in top.tolist())]
    result.update(
        k=k,
        neighbours_sharing_label=round(float(shared.float().mean()), 4),  # of all Q x k neighbours
        queries_all_k_share_label=round(float(shared.all(-1).float().mean()), 4),
        nearest_shares_label=round(float(shared[:, 0].float().mean()), 4),
        majority_of_k_is_label=round(sum(v == t for v, t in zip(votes, truth)) / len(truth), 4),
        query_ms_per_row=round(1000 * query_seconds / len(truth), 2),
    )
    # the reduction's fidelity: the top k among the stored rows from the full vectors
    _, full, _ = training_vectors(model, index_training_rows(train_set, index), resolve_device(device))
    full_scores = torch.nn.functional.normalize(queries, dim=-1) @ torch.nn.functional.normalize(full, dim=-1).T
    full_top = full_scores.topk(k, dim=-1).indices
    overlap = [len(set(a) & set(b)) / k for a, b in zip(top.tolist(), full_top.tolist())]
    result["reduction_top_k_overlap"] = round(sum(overlap) / len(overlap), 4)
    result["load_average"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return result


def index_training_rows(dataset, index):
    """The dataset's rows that the index holds, in the index's order (matched by image and text)."""
    root = Path(dataset.csv_path).resolve().parent
    by_key = {(Path(os.path.relpath(e.image, root)).as_posix(), e.text): e for e in dataset.examples}
    return [by_key[(index.images[int(i)], index.texts[int(t)])] for i, t in zip(index.row_image, index.row_text)]


def _query_vectors(model, examples) -> torch.Tensor:
    vectors = []
    for start in range(0, len(examples), QUERY_BATCH):
        chunk = examples[start : start + QUERY_BATCH]
        vectors.append(joint_vectors(model, [decode_image(e.image) for e in chunk], [e.text for e in chunk]))
    return torch.cat(vectors)


def _epochs_to_stderr(event: dict) -> None:
    if event.get("stage") in ("plan", "split", "epoch"):
        words = event.get("message") or {k: v for k, v in event.items() if k in ("epoch", "val_accuracy", "train_loss")}
        print(words, file=sys.stderr, flush=True)
