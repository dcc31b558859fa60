"""Explanation by example: the training rows a model sees as most alike an input.

"Similar" is measured where the answer is read from: the vector the classifier head reads (the
fusion's summary of image and question together, the input of ``model.head``). Two rows are
close when the model has put them in nearly the same place before answering, whatever their
pixels or wording.

The index lives in the checkpoint folder, safetensors + JSON, never pickle:

- ``similar.safetensors``: every indexed row's head input, L2-normalised, centred on the
  training rows' mean and projected on their first ``DIMS`` principal directions (PCA fitted on
  those rows), then normalised again and stored as float16: 20,000 rows take 2.5 MB. Why PCA
  rather than a random projection: a 64-dimensional random projection moves each cosine by about
  1/sqrt(64) = 0.12, enough to reorder close neighbours, while the head's inputs lie near a
  low-dimensional subspace (one cluster per answer), which the first principal directions keep;
  the projection (a D x 64 matrix) is stored beside the vectors, so a query goes through the same
  reduction. Beside them, optionally, small PNG thumbnails of the distinct images
  (``THUMBNAIL_SIDE`` px, at most ``THUMBNAIL_BYTES`` in all): a checkpoint whose training images
  are not kept (the app deletes an upload after its job; the shipped model's scenes were
  generated) still shows them.
- ``similar.json``: each row's image path as the training CSV gave it (relative), text and
  label, and what the index was built from. Written last: it marks a whole index.

``load_index`` is strict: exactly the expected tensors, dtypes, shapes and JSON keys, or a
ValueError that names the file within the checkpoint. Query: the input's head vector through the
same reduction, cosine similarity (a dot product of unit vectors), the top k.

The vectors of a training run's rows come from the training engine's feature cache
(training/similar_fit.py); this module needs only a model and vectors. How often the nearest
rows share a query's label: ``python -m mmdemo bench-similar``.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..model.classifier import MultimodalClassifier
from ..model.encoders import load_tokenizer
from ..model.preprocess import image_to_tensor, tokenize

INDEX_TENSORS, INDEX_JSON = "similar.safetensors", "similar.json"
FORMAT, VERSION = "mmdemo-similar", 1
DIMS = 64  # reduced dimensions: 20,000 rows x 64 x 2 bytes = 2.5 MB
MAX_ROWS = 20_000  # rows indexed (a larger training set: a fixed sample of its rows)
THUMBNAIL_SIDE = 48  # px, the longer side of a stored thumbnail
THUMBNAIL_BYTES = 1_000_000  # stored thumbnails in all; images beyond it get none
MAX_K = 50  # neighbours one query may ask for
TENSOR_KEYS = ("vectors", "mean", "projection", "row_image", "row_text", "row_label", "image_thumbnail",
               "thumbnail_bytes", "thumbnail_offsets")  # fmt: skip
JSON_KEYS = ("format", "version", "dims", "source_dims", "images", "texts", "labels", "fitted_on")
MEANING = (
    "Similar: the training rows whose image and question together the model represents most alike this input"
    " (cosine similarity of the vector its answer is read from; 1 = the same)."
)


class Neighbour(NamedTuple):
    row: int  # position in the index
    image: str  # the image path as the training CSV gave it (relative to its folder)
    text: str
    label: str  # the row's label in the training data
    similarity: float  # cosine similarity to the query, -1 .. 1

    def to_json(self) -> dict:
        return {"image": self.image, "text": self.text, "label": self.label, "similarity": round(self.similarity, 4)}


@dataclass
class SimilarIndex:
    """N indexed rows; their images, texts and labels are stored once each (a question asked of
    many images, an image asked many questions) and named per row by position."""

    vectors: torch.Tensor  # (N, d) float16, unit rows
    mean: torch.Tensor  # (D,) float32: mean of the L2-normalised training vectors
    projection: torch.Tensor  # (D, d) float32: their first d principal directions
    images: list[str]  # distinct image paths, as the CSV gave them
    texts: list[str]  # distinct texts
    labels: list[str]  # distinct labels
    row_image: torch.Tensor  # (N,) int32 into images
    row_text: torch.Tensor  # (N,) int32 into texts
    row_label: torch.Tensor  # (N,) int32 into labels
    thumbnails: list[bytes] = field(default_factory=list)  # PNG files
    image_thumbnail: torch.Tensor | None = None  # (len(images),) int32 into thumbnails, -1: none
    fitted_on: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image_thumbnail is None:
            self.image_thumbnail = torch.full((len(self.images),), -1, dtype=torch.int32)

    def __len__(self) -> int:
        return len(self.vectors)

    def row(self, i: int, similarity: float = 1.0) -> Neighbour:
        return Neighbour(
            i,
            self.images[int(self.row_image[i])],
            self.texts[int(self.row_text[i])],
            self.labels[int(self.row_label[i])],
            similarity,
        )

    def reduce(self, vectors: torch.Tensor) -> torch.Tensor:
        """(B, D) head inputs -> (B, d) unit vectors, the way the indexed rows were reduced."""
        if vectors.shape[-1] != self.mean.shape[0]:
            raise ValueError(
                f"the similar-examples index was built for {self.mean.shape[0]}-dimensional representations,"
                f" this model makes {vectors.shape[-1]}: rebuild it for this checkpoint"
            )
        unit = torch.nn.functional.normalize(vectors.float(), dim=-1)
        return torch.nn.functional.normalize((unit - self.mean) @ self.projection, dim=-1)

    def similarities(self, vectors: torch.Tensor) -> torch.Tensor:
        """(B, D) head inputs -> (B, N) cosine similarity to every indexed row."""
        return self.reduce(vectors) @ self.vectors.float().T

    def query(self, vector: torch.Tensor, k: int = 5) -> list[Neighbour]:
        """The ``k`` indexed rows most similar to one head input (D,), most similar first."""
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be from 1 to {MAX_K}, got {k}")
        scores = self.similarities(vector.reshape(1, -1))[0]
        top = torch.topk(scores, min(k, len(scores)))
        # float16 rounding can put a row's similarity to itself just past 1
        return [self.row(i, min(1.0, max(-1.0, s))) for s, i in zip(top.values.tolist(), top.indices.tolist())]

    def thumbnail(self, row: int) -> Image.Image | None:
        """The stored thumbnail of a row's image, or None when the index holds none for it."""
        slot = int(self.image_thumbnail[int(self.row_image[row])])
        if slot < 0:
            return None
        image = Image.open(io.BytesIO(self.thumbnails[slot]), formats=("PNG",))
        image.load()
        return image.convert("RGB")


# -- building ----------------------------------------------------------------------------------
def _factorise(values: list[str]) -> tuple[list[str], torch.Tensor]:
    """Distinct values in order of first appearance, and each value's position among them."""
    table: dict[str, int] = {}
    codes = [table.setdefault(v, len(table)) for v in values]
    return list(table), torch.tensor(codes, dtype=torch.int32)


def fit_index(
    vectors: torch.Tensor,
    images: list[str],
    texts: list[str],
    labels: list[str],
    thumbnails: dict[str, bytes] | None = None,
    dims: int = DIMS,
    fitted_on: dict | None = None,
) -> SimilarIndex:
    """An index of rows from their (N, D) head inputs and per-row image path, text and label: the
    reduction fitted on them (see the module docstring); ``thumbnails``: image path -> PNG."""
    n = len(vectors)
    if not n or not (n == len(images) == len(texts) == len(labels)):
        raise ValueError(f"an index needs rows with an image, a text and a label each, got {n} vectors")
    unit = torch.nn.functional.normalize(vectors.double(), dim=-1)
    mean = unit.mean(0)
    centred = unit - mean
    d = max(1, min(dims, n - 1, unit.shape[1]))
    # principal directions: eigenvectors of the (D, D) scatter matrix, the largest first
    _, eigenvectors = torch.linalg.eigh(centred.T @ centred)
    projection = eigenvectors[:, -d:].flip(-1)
    reduced = torch.nn.functional.normalize(centred @ projection, dim=-1)
    image_table, row_image = _factorise([str(i) for i in images])
    text_table, row_text = _factorise(list(texts))
    label_table, row_label = _factorise([str(label) for label in labels])
    thumbnails = thumbnails or {}
    stored = [path for path in image_table if path in thumbnails]
    slot = {path: i for i, path in enumerate(stored)}
    return SimilarIndex(
        vectors=reduced.half(),
        mean=mean.float(),
        projection=projection.float().contiguous(),
        images=image_table,
        texts=text_table,
        labels=label_table,
        row_image=row_image,
        row_text=row_text,
        row_label=row_label,
        thumbnails=[thumbnails[path] for path in stored],
        image_thumbnail=torch.tensor([slot.get(path, -1) for path in image_table], dtype=torch.int32),
        fitted_on={"rows": n, **(fitted_on or {})},
    )


def thumbnail_png(image: Image.Image, side: int = THUMBNAIL_SIDE) -> bytes:
    """A small PNG of an image (its longer side at most ``side`` px), for the index."""
    small = image.convert("RGB")
    small.thumbnail((side, side), Image.BILINEAR)
    out = io.BytesIO()
    small.save(out, format="PNG", optimize=True)
    return out.getvalue()


@contextmanager
def head_inputs(model: MultimodalClassifier) -> Iterator[list[torch.Tensor]]:
    """Collects, in call order, the batches ``model.head`` reads while the block runs: for a model
    only this caller runs (a training run's), never a served one, whose other callers would add theirs."""
    captured: list[torch.Tensor] = []
    handle = model.head.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach().float().cpu()))
    try:
        yield captured
    finally:
        handle.remove()


@torch.no_grad()
def joint_vectors(model: MultimodalClassifier, images: list[Image.Image], texts: list[str]) -> torch.Tensor:
    """(B, D) head inputs of image + text pairs (decoded RGB images): the fusion's summary, computed
    as a forward computes it, without touching the (possibly shared, serving) model."""
    device = next(model.parameters()).device
    pixels = torch.stack([image_to_tensor(image, model.config) for image in images]).to(device)
    tokens = tokenize(load_tokenizer(model.config.text_model), list(texts), model.config.max_tokens)
    mask = tokens.attention_mask.to(device)
    feature_map = model.encode_image(pixels)  # (B, C, h, w)
    text_states = model.encode_text(tokens.input_ids.to(device), mask)  # (B, T, E)
    summary, _, _ = model.fusion(feature_map, text_states, mask, pixels=pixels)  # (B, D)
    return summary.float().cpu()


def similar_to(model: MultimodalClassifier, index: SimilarIndex, image: Image.Image, text: str, k: int = 5):
    """The ``k`` indexed training rows most similar to one decoded image + text, most similar first
    (the one query the CLI and the app make)."""
    return index.query(joint_vectors(model, [image], [text])[0], k)


# -- files -------------------------------------------------------------------------------------
def has_index(folder: str | os.PathLike) -> bool:
    return (Path(folder) / INDEX_JSON).is_file()


def save_index(folder: str | os.PathLike, index: SimilarIndex) -> None:
    """Write the index into a checkpoint folder, each file atomically, the JSON last."""
    folder = Path(folder)
    offsets = [0]
    for png in index.thumbnails:
        offsets.append(offsets[-1] + len(png))
    blob = bytearray(b"".join(index.thumbnails))
    tensors = {
        "vectors": index.vectors.half().contiguous(),
        "mean": index.mean.float().contiguous(),
        "projection": index.projection.float().contiguous(),
        "row_image": index.row_image.to(torch.int32).contiguous(),
        "row_text": index.row_text.to(torch.int32).contiguous(),
        "row_label": index.row_label.to(torch.int32).contiguous(),
        "image_thumbnail": index.image_thumbnail.to(torch.int32).contiguous(),
        "thumbnail_bytes": torch.frombuffer(blob, dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8),
        "thumbnail_offsets": torch.tensor(offsets, dtype=torch.int64),
    }
    data = {
        "format": FORMAT,
        "version": VERSION,
        "dims": int(index.vectors.shape[1]),
        "source_dims": int(index.mean.shape[0]),
        "images": index.images,
        "texts": index.texts,
        "labels": index.labels,
        "fitted_on": index.fitted_on,
    }
    for name, write in (
        (INDEX_TENSORS, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT, "version": str(VERSION)})),
        (INDEX_JSON, lambda tmp: tmp.write_text(json.dumps(data, separators=(",", ":")) + "\n")),
    ):
        tmp = folder / f".{name}.tmp"
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, folder / name)


def load_index(folder: str | os.PathLike) -> SimilarIndex | None:
    """The checkpoint's index, or None when it has none; a ValueError when it is not whole or not
    what this version writes (the message names the files within the checkpoint, never a server path)."""
    folder = Path(folder)
    if not has_index(folder):
        return None

    def bad(problem: str) -> ValueError:
        return ValueError(f"the similar-examples index of checkpoint {folder.name!r} is not readable: {problem}")

    try:
        data = json.loads((folder / INDEX_JSON).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad(f"{INDEX_JSON} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or sorted(data) != sorted(JSON_KEYS):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise bad(f"{INDEX_JSON} must hold exactly the keys {list(JSON_KEYS)}, found {keys}")
    if data["format"] != FORMAT or data["version"] != VERSION:
        raise bad(
            f"{INDEX_JSON} is {data['format']!r} version {data['version']!r}; this mmdemo reads {FORMAT} {VERSION}"
        )
    for key in ("images", "texts", "labels"):
        if not isinstance(data[key], list) or not all(isinstance(v, str) for v in data[key]):
            raise bad(f"{INDEX_JSON}: {key} must be a list of strings")
    if not all(isinstance(data[key], int) and data[key] > 0 for key in ("dims", "source_dims")):
        raise bad(f"{INDEX_JSON}: dims and source_dims must be positive integers")
    if not isinstance(data["fitted_on"], dict):
        raise bad(f"{INDEX_JSON}: fitted_on must be a JSON object")
    if not (folder / INDEX_TENSORS).is_file():
        raise bad(f"{INDEX_TENSORS} is missing")
    try:
        t = load_file(folder / INDEX_TENSORS)
    except (SafetensorError, OSError) as e:
        raise bad(f"{INDEX_TENSORS} is not a safetensors file ({str(e).replace(str(folder), '')})") from None
    problem = _tensor_problem(t, data)
    if problem:
        raise bad(f"{INDEX_TENSORS}: {problem}")
    offsets = t["thumbnail_offsets"].tolist()
    blob = t["thumbnail_bytes"].numpy().tobytes()
    return SimilarIndex(
        vectors=t["vectors"],
        mean=t["mean"],
        projection=t["projection"],
        images=data["images"],
        texts=data["texts"],
        labels=data["labels"],
        row_image=t["row_image"],
        row_text=t["row_text"],
        row_label=t["row_label"],
        thumbnails=[blob[a:b] for a, b in zip(offsets[:-1], offsets[1:])],
        image_thumbnail=t["image_thumbnail"],
        fitted_on=data["fitted_on"],
    )


def _tensor_problem(t: dict[str, torch.Tensor], data: dict) -> str | None:
    """What is wrong with the index's tensors, given its JSON (None: nothing)."""
    if sorted(t) != sorted(TENSOR_KEYS):
        return f"expected exactly the tensors {list(TENSOR_KEYS)}, found {sorted(t)}"
    rows, dims, source = len(t["vectors"]), data["dims"], data["source_dims"]
    expected = {
        "vectors": (torch.float16, (rows, dims)),
        "mean": (torch.float32, (source,)),
        "projection": (torch.float32, (source, dims)),
        "row_image": (torch.int32, (rows,)),
        "row_text": (torch.int32, (rows,)),
        "row_label": (torch.int32, (rows,)),
        "image_thumbnail": (torch.int32, (len(data["images"]),)),
        "thumbnail_bytes": (torch.uint8, (len(t["thumbnail_bytes"]),)),
        "thumbnail_offsets": (torch.int64, (len(t["thumbnail_offsets"]),)),
    }
    for key, (dtype, shape) in expected.items():
        if t[key].dtype != dtype or tuple(t[key].shape) != shape:
            return f"{key} is {t[key].dtype} {tuple(t[key].shape)}, expected {dtype} {shape}"
    if not rows:
        return "it holds no rows"
    for key, table in (("row_image", "images"), ("row_text", "texts"), ("row_label", "labels")):
        if int(t[key].min()) < 0 or int(t[key].max()) >= len(data[table]):
            return f"{key} names entries that {INDEX_JSON}'s {table} does not hold"
    offsets = t["thumbnail_offsets"]
    if not len(offsets) or int(offsets[0]) != 0 or int(offsets[-1]) != len(t["thumbnail_bytes"]):
        return "thumbnail_offsets do not span thumbnail_bytes"
    if bool((offsets[1:] < offsets[:-1]).any()):
        return "thumbnail_offsets are not in order"
    slots = t["image_thumbnail"]
    if len(slots) and (int(slots.min()) < -1 or int(slots.max()) >= len(offsets) - 1):
        return "image_thumbnail names a thumbnail the index does not hold"
    return None
