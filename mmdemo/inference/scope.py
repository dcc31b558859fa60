"""Out-of-scope assessment of one prediction: how far its input is from what the model was
trained on.

A checkpoint may carry ``scope.safetensors`` (tensors) and a ``scope`` block in config.json
(words, thresholds, what the statistics were fitted on): ``load_scope`` reads them and
``assess`` judges every prediction by three checks; it is ``in_scope`` only when all pass:

- image: Mahalanobis distance of the image-encoder features pooled over regions
  (``pooled_image``: their mean and standard deviation; how the regions differ tells a scene of
  objects from a blank page) to a Gaussian fitted on the training images and on benign
  re-encodings of them, so that a phone photo or a screenshot of an in-scope image stays in
  scope while a real photo does not; the threshold comes from the validation images
  (``python -m mmdemo bench-scope`` prints the flag rate of each re-encoding).
- text: evidence at word level, because a sentence embedding places "What shape is the
  purple object?" as close to the training questions as a new wording of them:
  * slot words, found from the training texts alone: words that replace each other in
    otherwise identical texts ("red" / "green" / ... in "What shape is the {c} object?").
    Every training text holds a fixed number of them; a text with another number (an unknown
    colour: none; a question about two objects: two) is flagged, and so is a slot word in a
    context it never had ("How many red objects ..." where training always said "red object").
  * an unseen word counts as a known one when its input embedding is almost the same
    (cosine >= ``SYNONYM_COS``: "grey" -> "gray"); label words ("circle") count as seen.
  * the fraction of unseen words, and the cosine similarity of the mean-pooled text states to
    the nearest training text, each against a limit set on the validation texts.
- joint: how much the answer depends on the image, as the total variation distance between
  the answer distribution with the image and with the image masked out (the model was trained
  with modality dropout, so "text only" is a mode it knows). An answer that stays the same
  without the image ignores the image.

The statistics are fitted after training, by training/scope_fit.py; what fitting and
assessment share (the pooling, the distances, the file format) is here, so that serving never
imports the training side.

A checkpoint without statistics still predicts: ``in_scope`` is then true and the scope block
says ``"fitted": false`` (nothing was measured, so nothing is claimed).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

SCOPE_FILE = "scope.safetensors"
SCOPE_VERSION = 2
# what each version's image statistics were fitted on: 1 the mean over regions of the original
# images only (older fine-tunes, still read), 2 the mean and standard deviation over regions
# of the original images and their re-encodings
IMAGE_POOLING = {1: "mean", 2: "mean+std"}
SYNONYM_COS = 0.75  # input-embedding cosine at which an unseen word stands for a known one

MESSAGES = {
    "image": "this image is unlike the training images",
    "text": "this question is unlike the training questions",
    "ignores_image": "the answer ignores the image",
}
# only to recognise that an unknown word is a colour: the colours a model knows come from its
# training texts and answers (ScopeStats.vocabulary, label_words)
COLOUR_WORDS = frozenset(
    "red green blue yellow orange purple violet pink brown black white gray grey cyan magenta teal"
    " turquoise beige maroon navy lime olive gold silver indigo".split()
)
NAMED_WORDS = 3  # unknown words a message names at most

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-cased words (letters and digits) of a text."""
    return _WORD.findall(text.lower())


# -- statistics ----------------------------------------------------------------------------
@dataclass
class ScopeStats:
    image_mean: torch.Tensor  # (C,)
    image_precision: torch.Tensor  # (C, C)
    text_bank: torch.Tensor  # (N, E) unit-norm mean-pooled text states of training texts
    vocab_vectors: torch.Tensor  # (V, E') unit-norm input embeddings of vocabulary[:V]
    vocabulary: list[str]  # every word of the training texts, most frequent first
    label_words: list[str]
    slots: list[dict]  # {"words": [...], "counts": [...], "left": [...], "right": [...]}
    image_threshold: float
    text_similarity_floor: float
    unseen_fraction_limit: float
    reliance_floor: float
    fitted_on: dict = field(default_factory=dict)
    version: int = SCOPE_VERSION  # which image statistic (IMAGE_POOLING)

    def block(self) -> dict:
        """The JSON part, stored as ``scope`` in config.json."""
        return {
            "version": self.version,
            "file": SCOPE_FILE,
            "vocabulary": self.vocabulary,
            "label_words": self.label_words,
            "slots": self.slots,
            "image_threshold": round(self.image_threshold, 4),
            "text_similarity_floor": round(self.text_similarity_floor, 4),
            "unseen_fraction_limit": round(self.unseen_fraction_limit, 4),
            "reliance_floor": round(self.reliance_floor, 4),
            "fitted_on": self.fitted_on,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "image_mean": self.image_mean.float().contiguous(),
            "image_precision": self.image_precision.float().contiguous(),
            "text_bank": self.text_bank.half().contiguous(),
            "vocab_vectors": self.vocab_vectors.half().contiguous(),
        }


BLOCK_FIELDS = (
    "vocabulary", "label_words", "slots", "image_threshold", "text_similarity_floor", "unseen_fraction_limit",
    "reliance_floor",
)  # fmt: skip


def load_scope(path: str | os.PathLike) -> ScopeStats | None:
    """The checkpoint's statistics, or None when it has none. A ``scope`` block without its
    tensors (or the reverse) is an error, not a silent "in scope". Every error names the file
    by its name within the checkpoint (a visitor sees it; a server path is not theirs to see)."""
    path = Path(path)
    block = json.loads((path / "config.json").read_text()).get("scope")
    if not block:
        return None
    where = f"checkpoint {path.name!r}"
    if not isinstance(block, dict):
        raise ValueError(f"config.json in {where} has a scope block that is not a JSON object")
    version = block.get("version")
    if version not in IMAGE_POOLING:
        readable = " and ".join(str(v) for v in IMAGE_POOLING)
        raise ValueError(
            f"config.json in {where} has scope statistics of version {version!r}, which this mmdemo cannot read"
            f" (it reads versions {readable}); fit them again with python -m mmdemo fit-scope"
        )
    if block.get("file", SCOPE_FILE) != SCOPE_FILE:  # a name, never a path out of the folder
        raise ValueError(f"config.json in {where} names {block.get('file')!r} as its scope file, not {SCOPE_FILE}")
    file = path / SCOPE_FILE
    if not file.is_file():
        raise ValueError(f"{where} is not complete: config.json has a scope block but {SCOPE_FILE} is missing")
    missing = [k for k in BLOCK_FIELDS if k not in block]
    if missing:
        raise ValueError(f"config.json in {where} has an incomplete scope block: no {', '.join(missing)}")
    try:
        t = load_file(file)
    except (SafetensorError, OSError) as e:
        reason = str(e).replace(str(file), SCOPE_FILE)
        raise ValueError(f"{SCOPE_FILE} in {where} is not a safetensors file ({reason})") from None
    problem = _tensor_problem(t, len(block["vocabulary"]))
    if problem:
        raise ValueError(f"{SCOPE_FILE} in {where} does not hold scope statistics: {problem}")
    try:
        return ScopeStats(
            image_mean=t["image_mean"].float(),
            image_precision=t["image_precision"].float(),
            text_bank=t["text_bank"].float(),
            vocab_vectors=t["vocab_vectors"].float(),
            vocabulary=list(block["vocabulary"]),
            label_words=list(block["label_words"]),
            slots=list(block["slots"]),
            image_threshold=float(block["image_threshold"]),
            text_similarity_floor=float(block["text_similarity_floor"]),
            unseen_fraction_limit=float(block["unseen_fraction_limit"]),
            reliance_floor=float(block["reliance_floor"]),
            fitted_on=dict(block.get("fitted_on", {})),
            version=version,
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"config.json in {where} has a scope block with a value of the wrong type ({e})") from None


def _tensor_problem(t: dict[str, torch.Tensor], vocabulary: int) -> str | None:
    """What is wrong with the tensors of a scope file (None: nothing)."""
    expected = ("image_mean", "image_precision", "text_bank", "vocab_vectors")
    missing = [k for k in expected if k not in t]
    if missing:
        return f"no {', '.join(missing)}"
    c = t["image_mean"].shape
    if len(c) != 1 or tuple(t["image_precision"].shape) != (c[0], c[0]):
        return f"image_mean {tuple(c)} and image_precision {tuple(t['image_precision'].shape)} do not match"
    if t["text_bank"].ndim != 2 or t["vocab_vectors"].ndim != 2 or len(t["vocab_vectors"]) > vocabulary:
        return f"text_bank {tuple(t['text_bank'].shape)} or vocab_vectors {tuple(t['vocab_vectors'].shape)} malformed"
    return None


# -- pure maths ------------------------------------------------------------------------------
def pooled_image(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, 2C): the mean over regions, then the standard deviation over regions.
    The spread is what tells six objects on white from a blank page or a line of text, which
    have much the same mean; both move little when a scene is re-encoded."""
    fm = feature_map.float()
    mean = fm.mean((2, 3))  # (B, C)
    spread = (fm - mean[:, :, None, None]).square().mean((2, 3)).sqrt()  # (B, C)
    return torch.cat([mean, spread], 1)


def image_statistic(stats: ScopeStats, pooled: torch.Tensor) -> torch.Tensor:
    """(..., 2C) pooled features -> what ``stats``' image Gaussian was fitted on (version 1:
    the mean over regions alone)."""
    if IMAGE_POOLING[stats.version] == "mean":
        return pooled[..., : pooled.shape[-1] // 2]
    return pooled


def pooled_text(text_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, E), (B, T) -> (B, E) unit-norm mean over the real tokens."""
    m = attention_mask[:, : text_states.shape[1]].unsqueeze(-1).float()
    pooled = (text_states.float() * m).sum(1) / m.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def mahalanobis(x: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    d = x.float() - mean
    return torch.einsum("bi,ij,bj->b", d, precision, d).clamp(min=0).sqrt()


def nearest_similarity(x: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """(B, E) unit vectors -> (B,) cosine to the nearest row of ``bank``."""
    return (x.float() @ bank.float().T).max(1).values


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Row-wise total variation distance of two (B, L) probability tables."""
    return 0.5 * (p - q).abs().sum(-1)


def text_problems(ws: list[str], stats: ScopeStats, synonyms: dict[str, str]) -> tuple[list[str], list[str], float]:
    """(unseen words, slot problems, unseen fraction) of one text's words. ``synonyms`` maps
    unseen words to the known word they stand for."""
    seen, labels = set(stats.vocabulary), set(stats.label_words)
    known = seen | labels
    mapped = [synonyms.get(w, w) for w in ws]
    unseen = [w for w, m in zip(ws, mapped) if m not in known]
    problems = []
    for slot in stats.slots:
        members = set(slot["words"])
        n = sum(w in members for w in mapped)
        if n not in slot["counts"]:
            expected = " or ".join(str(c) for c in slot["counts"])
            problems.append(f"{n} of the words {{{', '.join(slot['words'])}}} (training texts have {expected})")
            continue
        for i, w in enumerate(mapped):
            if w not in members:
                continue
            for side, j in (("left", i - 1), ("right", i + 1)):
                neighbour = mapped[j] if 0 <= j < len(mapped) else ""
                # an unseen neighbour or an answer word ("the red square") gets the benefit of
                # the doubt (a new wording); a word of the training texts where they never had
                # it is a different question ("How many red objects ...")
                if neighbour in seen and neighbour not in labels and neighbour not in slot[side]:
                    problems.append(f"'{ws[i]}' next to '{neighbour}', never seen in training")
    return unseen, problems, len(unseen) / max(1, len(ws))


def known_colours(stats: ScopeStats) -> list[str]:
    """The colour words of the training texts and answers, most frequent first."""
    seen = dict.fromkeys(w for w in [*stats.vocabulary, *stats.label_words] if w in COLOUR_WORDS)
    return list(seen)


def text_message(unseen: list[str], stats: ScopeStats) -> str:
    """Why a question is out of scope, in the visitor's words: the unknown words by name (a colour
    the model does not know as such, with the colours it knows), else the generic reason."""
    colours = known_colours(stats)
    parts = []
    for word in list(dict.fromkeys(unseen))[:NAMED_WORDS]:
        if word in COLOUR_WORDS and colours:
            parts.append(f"{word} is not a colour this model knows (it knows {', '.join(colours)})")
        else:
            parts.append(f"'{word}' is not a word this model was trained on")
    return "; ".join(parts) or MESSAGES["text"]


def assess(
    stats: ScopeStats | None,
    image_vec: torch.Tensor,
    text_vec: torch.Tensor,
    ws: list[str],
    synonyms: dict[str, str],
    reliance: float,
) -> dict:
    """One prediction's scope: ``in_scope``, the reasons and the scores behind them."""
    if stats is None:
        return {"in_scope": True, "fitted": False, "reasons": [], "note": "this checkpoint has no scope statistics"}
    distance = float(mahalanobis(image_statistic(stats, image_vec)[None], stats.image_mean, stats.image_precision)[0])
    similarity = float(nearest_similarity(text_vec[None], stats.text_bank)[0])
    unseen, slot_problems, unseen_fraction = text_problems(ws, stats, synonyms)
    reasons = []
    if distance > stats.image_threshold:
        reasons.append("image")
    if slot_problems or similarity < stats.text_similarity_floor or unseen_fraction > stats.unseen_fraction_limit:
        reasons.append("text")
    if reliance < stats.reliance_floor:
        reasons.append("ignores_image")
    return {
        "in_scope": not reasons,
        "fitted": True,
        "reasons": reasons,
        "messages": [text_message(unseen, stats) if r == "text" else MESSAGES[r] for r in reasons],
        "image_distance": round(distance, 3),
        "image_threshold": round(stats.image_threshold, 3),
        "text_similarity": round(similarity, 4),
        "text_similarity_floor": round(stats.text_similarity_floor, 4),
        "unseen_words": unseen,
        "unseen_fraction": round(unseen_fraction, 4),
        "slot_problems": slot_problems,
        "image_reliance": round(reliance, 4),
        "image_reliance_floor": round(stats.reliance_floor, 4),
    }


# -- word embeddings (synonyms) -----------------------------------------------------------------
def embedding_table(text_encoder: torch.nn.Module, vocab_size: int) -> torch.Tensor | None:
    """The text encoder's input embedding table (the first embedding with the tokenizer's
    vocabulary size), or None."""
    for module in text_encoder.modules():
        if isinstance(module, torch.nn.Embedding) and module.num_embeddings == vocab_size:
            return module.weight.detach()
    return None


def word_vectors(table: torch.Tensor, tokenizer, ws: list[str]) -> torch.Tensor:
    """(len(ws), E) unit-norm mean input embedding of each word's WordPiece tokens."""
    rows = []
    for w in ws:
        ids = tokenizer(w, add_special_tokens=False)["input_ids"] or [tokenizer.unk_token_id]
        rows.append(table[ids].float().mean(0))
    return torch.nn.functional.normalize(torch.stack(rows), dim=-1) if rows else torch.zeros(0, table.shape[1])


def synonyms_for(ws: list[str], stats: ScopeStats, table: torch.Tensor | None, tokenizer) -> dict[str, str]:
    """Unseen words whose embedding is within SYNONYM_COS of a known word -> that word."""
    known = set(stats.vocabulary) | set(stats.label_words)
    unseen = sorted({w for w in ws if w not in known})
    if not unseen or table is None or not len(stats.vocab_vectors):
        return {}
    sims = word_vectors(table, tokenizer, unseen) @ stats.vocab_vectors.T  # (U, V)
    best, index = sims.max(1)
    return {w: stats.vocabulary[int(i)] for w, b, i in zip(unseen, best.tolist(), index.tolist()) if b >= SYNONYM_COS}
