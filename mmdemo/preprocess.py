"""Preprocessing built from the model config: images -> pixel tensors, texts -> token ids.

Pure functions: the same ones serve training and inference, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from .model import ModelConfig


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
        if not isinstance(text, str) or not text.strip():
            raise ValueError("the text is empty" if len(texts) == 1 else f"text {i + 1} is empty")
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
