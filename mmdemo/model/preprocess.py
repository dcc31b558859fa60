"""Preprocessing built from the model config: images -> pixel tensors, texts -> token ids.

Pure functions: the same ones serve training and inference, so the two cannot drift apart.
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from .classifier import ModelConfig


def image_to_uint8(image: Image.Image, config: ModelConfig) -> torch.Tensor:
    """RGB image -> (3, S, S) uint8 tensor, squashed to a square so that a region maps
    linearly back to the input image's pixels (what training caches: 4x smaller than floats)."""
    size = config.image_size
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # (3, S, S)


def normalize_pixels(pixels: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """uint8 (..., 3, S, S) -> float ``(x / 255 - mean) / std``."""
    return (pixels.float() / 255.0 - config.pixel_mean) / config.pixel_std


def image_to_tensor(image: Image.Image, config: ModelConfig) -> torch.Tensor:
    """RGB image -> normalised (3, S, S) float tensor, as the model takes it."""
    return normalize_pixels(image_to_uint8(image, config), config)


# A WordPiece token covers at most 100 characters (longer words become one [UNK]), so
# max_tokens * 100 characters hold the kept tokens of any text without long runs of spaces:
# text beyond that is cut before the tokenizer sees it (a 50 MB question then costs what
# 6 kB do, instead of minutes).
CHARS_PER_TOKEN_BOUND = 100


# Characters that draw nothing yet are not whitespace to str.strip(): format characters (zero-width
# space and joiners, BOM, soft hyphen, bidi marks: category Cf), controls (Cc) and the Hangul and
# Braille fillers. A text of only these is empty to a reader.
INVISIBLE_CATEGORIES = frozenset({"Cf", "Cc", "Zs", "Zl", "Zp"})
INVISIBLE_FILLERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
SURROGATE = re.compile("[\ud800-\udfff]")


def is_blank(text: str) -> bool:
    """True when ``text`` shows nothing: empty, whitespace or invisible characters only."""
    return all(c.isspace() or c in INVISIBLE_FILLERS or unicodedata.category(c) in INVISIBLE_CATEGORIES for c in text)


def broken_character(text: str) -> int | None:
    """The 1-based position of the first lone UTF-16 surrogate in ``text`` (what a JSON client can
    send as "\\ud800": it is no character, and no tokenizer or file can hold it), or None."""
    found = SURROGATE.search(text)
    return None if found is None else found.start() + 1


def text_problem(text: object, what: str = "the text") -> str | None:
    """Why ``text`` cannot be read as text (in the words of whoever typed it), or None."""
    if not isinstance(text, str) or is_blank(text):
        invisible = isinstance(text, str) and text.strip()  # more than spaces, none of it shown
        return f"{what} is empty" + (" (it holds only invisible characters)" if invisible else "")
    position = broken_character(text)
    if position is not None:
        return (
            f"{what} holds a broken character at character {position} (U+{ord(text[position - 1]):04X}, half of"
            " a UTF-16 pair): type or paste it again"
        )
    return None


class TextBatch(NamedTuple):
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    truncated: list[bool]  # per text: whether it was cut to max_tokens
    word_ids: list[list[int | None]]  # per text, per token: index into words (None: special token)
    words: list[list[str]]  # per text: the words the kept tokens belong to


def tokenize(tokenizer, texts: list[str], max_tokens: int) -> TextBatch:
    """WordPiece ids, cut to ``max_tokens`` and padded to the longest text by the tokenizer itself
    (the character cap only bounds its work), with the word each token belongs to (a word cut by
    the truncation: its kept part). Raises ValueError on an empty text."""
    for i, text in enumerate(texts):
        problem = text_problem(text, "the text" if len(texts) == 1 else f"text {i + 1}")
        if problem:
            raise ValueError(problem)
    budget = max_tokens * CHARS_PER_TOKEN_BOUND
    cut = [len(t) > budget for t in texts]
    texts = [t[:budget] for t in texts]
    # the tokenizer's own truncation (it keeps [CLS] and the closing [SEP]) and padding
    enc = tokenizer(list(texts), truncation=True, max_length=max_tokens, padding=True, return_tensors="pt")
    truncated, all_word_ids, all_words = [], [], []
    for i, text in enumerate(texts):
        word_ids = enc.word_ids(i)[: int(enc["attention_mask"][i].sum())]  # without the padding
        dense: dict[int, int] = {}
        words = []
        for wid in word_ids:
            if wid is not None and wid not in dense:
                span = enc.word_to_chars(i, wid)
                dense[wid] = len(words)
                words.append(text[span.start : span.end])
        truncated.append(cut[i] or bool(enc.encodings[i].overflowing))
        all_word_ids.append([None if wid is None else dense[wid] for wid in word_ids])
        all_words.append(words)
    input_ids, attention_mask = enc["input_ids"].long(), enc["attention_mask"].long()
    return TextBatch(input_ids, attention_mask, truncated, all_word_ids, all_words)
