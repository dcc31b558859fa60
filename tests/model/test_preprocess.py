"""Text and image preprocessing from the model config."""

import pytest
import torch
from PIL import Image

from mmdemo.model.encoders import load_tokenizer
from mmdemo.model.preprocess import image_to_tensor, tokenize

from ..conftest import tiny_config


def test_long_text_is_truncated_and_says_so():
    tok = load_tokenizer("minilm")
    long = " ".join(["word"] * 100)
    batch = tokenize(tok, [long, "short text"], max_tokens=16)
    assert batch.input_ids.shape == (2, 16)
    assert batch.truncated == [True, False]
    assert batch.input_ids[0, -1] == tok.sep_token_id  # still closed by [SEP]
    assert len(batch.words[0]) == 14 and batch.words[1] == ["short", "text"]
    assert batch.attention_mask[1].tolist() == [1, 1, 1, 1] + [0] * 12


def test_empty_text_is_an_error():
    with pytest.raises(ValueError, match="the text is empty"):
        tokenize(load_tokenizer("minilm"), ["   "], 16)
    with pytest.raises(ValueError, match="text 2 is empty"):
        tokenize(load_tokenizer("minilm"), ["fine", ""], 16)


def test_wordpieces_map_to_words():
    batch = tokenize(load_tokenizer("minilm"), ["an unbelievably playful cat"], 32)
    words = batch.words[0]
    assert words == ["an", "unbelievably", "playful", "cat"]
    ids = [w for w in batch.word_ids[0] if w is not None]
    assert sorted(set(ids)) == [0, 1, 2, 3] and len(ids) > 4  # some words are several pieces


def test_image_is_squashed_and_normalised():
    config = tiny_config(image_size=32)
    image = Image.new("RGB", (100, 50), (255, 0, 0))
    x = image_to_tensor(image, config)
    assert x.shape == (3, 32, 32)
    torch.testing.assert_close(x[:, 5, 5], torch.tensor([1.0, -1.0, -1.0]))


def test_invisible_or_broken_text_is_an_error():
    tokenizer = load_tokenizer("minilm")
    with pytest.raises(ValueError, match=r"the text is empty \(it holds only invisible characters\)"):
        tokenize(tokenizer, ["\u200b\ufeff\u2060"], 8)
    with pytest.raises(ValueError, match="text 2 holds a broken character at character 3"):
        tokenize(tokenizer, ["fine", "ab\udc00c"], 8)
    assert tokenize(tokenizer, ["\u200bred"], 8).words == [["red"]]  # visible text with one in it is text
