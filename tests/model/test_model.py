"""Tiny-config model tests: shapes, attention, gradients, modality masking, row grouping."""

import torch

from mmdemo.model.encoders import load_tokenizer
from mmdemo.model.preprocess import tokenize

from ..conftest import tiny_config


def _inputs(model, batch=2):
    tb = tokenize(load_tokenizer("minilm"), ["a red cat on the left", "where is the dog?"][:batch], 16)
    pixels = torch.randn(batch, 3, 32, 32)
    return pixels, tb.input_ids, tb.attention_mask


def test_output_shapes_and_attention_rows_sum_to_one(tiny_model):
    pixels, ids, mask = _inputs(tiny_model)
    out = tiny_model(pixels, ids, mask)
    t = ids.shape[1]
    assert out.logits.shape == (2, 3)
    assert out.grid == (8, 8)
    assert len(out.cross_attention) == 2 and len(out.text_attention) == 2
    for cross in out.cross_attention:
        assert cross.shape == (2, 2, 1 + t, 64)
        torch.testing.assert_close(cross.sum(-1), torch.ones(2, 2, 1 + t))
    for self_attn in out.text_attention:
        assert self_attn.shape == (2, 2, 1 + t, 1 + t)
        torch.testing.assert_close(self_attn.sum(-1), torch.ones(2, 2, 1 + t))
        # padding keys get no weight
        padded = ~mask.bool()
        assert float(self_attn[:, :, :, 1:][padded[:, None, None, :].expand_as(self_attn[:, :, :, 1:])].sum()) == 0


def test_every_trainable_parameter_gets_a_gradient(tiny_model):
    pixels, ids, mask = _inputs(tiny_model)
    tiny_model.train()
    tiny_model(pixels, ids, mask).logits.sum().backward()
    missing = [n for n, p in tiny_model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    # the missing-image token is only used when an image is dropped
    assert missing == ["fusion.missing_region"]
    tiny_model.zero_grad()
    drop = torch.tensor([True, False])
    tiny_model(pixels, ids, mask, drop_image=drop).logits.sum().backward()
    assert tiny_model.fusion.missing_region.grad.abs().sum() > 0


def test_frozen_parts_get_no_gradient_and_stay_in_eval(tiny_model):
    tiny_model.set_frozen(["image_encoder"])
    tiny_model.train()
    assert not tiny_model.image_encoder.training and tiny_model.fusion.training
    pixels, ids, mask = _inputs(tiny_model)
    tiny_model(pixels, ids, mask).logits.sum().backward()
    assert all(p.grad is None for p in tiny_model.image_encoder.parameters())
    assert all(p.grad is not None for p in tiny_model.text_encoder.parameters())


def test_image_only_and_text_only(tiny_model):
    tiny_model.eval()
    pixels, ids, mask = _inputs(tiny_model)
    both = tiny_model(pixels, ids, mask).logits
    image_only = tiny_model(pixels, None, None).logits
    text_only = tiny_model(None, ids, mask).logits
    assert image_only.shape == text_only.shape == both.shape
    assert not torch.allclose(both, image_only) and not torch.allclose(both, text_only)
    # masking a modality per sample is the same as leaving it out
    dropped = tiny_model(pixels, ids, mask, drop_text=torch.tensor([True, True])).logits
    torch.testing.assert_close(dropped, image_only)
    dropped = tiny_model(pixels, ids, mask, drop_image=torch.tensor([True, True])).logits
    torch.testing.assert_close(dropped, text_only)


def test_rows_sharing_an_image_match_one_map_per_row(tiny_model):
    """Several questions about one image: the grouped path equals copying the map per row."""
    tiny_model.eval()
    tb = tokenize(load_tokenizer("minilm"), ["one", "two words", "three more words", "four", "five"], 16)
    maps = tiny_model.encode_image(torch.randn(2, 3, 32, 32))
    states = tiny_model.encode_text(tb.input_ids, tb.attention_mask)
    index = torch.tensor([1, 0, 1, 1, 0])
    grouped = tiny_model.forward_fusion(maps, states, tb.attention_mask, image_index=index)
    copied = tiny_model.forward_fusion(maps[index], states, tb.attention_mask)
    torch.testing.assert_close(grouped.logits, copied.logits)
    torch.testing.assert_close(grouped.cross_attention[-1], copied.cross_attention[-1])


def test_config_validation():
    import pytest

    with pytest.raises(ValueError, match="at least 2 labels"):
        tiny_config(labels=["only"])
    with pytest.raises(ValueError, match="image_encoder"):
        tiny_config(image_encoder="resnet")
    with pytest.raises(ValueError, match="unique"):
        tiny_config(labels=["a", "a"])
