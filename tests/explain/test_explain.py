"""Explanation maths: pure functions checked on hand-made attention."""

import pytest
import torch

from mmdemo.explain.methods import explain, gradient_relevance, normalize, peak_xy, raw_relevance, upsample


def test_peak_is_in_input_image_pixels():
    grid = torch.zeros(4, 4)
    grid[1, 2] = 1.0  # row 1, column 2
    x, y = peak_xy(grid, (400, 200))  # width 400, height 200
    assert (x, y) == pytest.approx(((2 + 0.5) * 100, (1 + 0.5) * 50))


def test_peak_between_two_equal_cells_lies_between_them():
    grid = torch.zeros(4, 4)
    grid[1, 1] = grid[1, 2] = 1.0
    x, y = peak_xy(grid, (4, 4))
    assert x == pytest.approx(2.0) and y == pytest.approx(1.5)


def test_upsample_and_normalize_ranges():
    grid = torch.rand(7, 7) * 5 - 2
    scaled = normalize(grid)
    assert float(scaled.min()) == 0 and float(scaled.max()) == 1
    big = upsample(scaled, (300, 451))
    assert big.shape == (300, 451) and float(big.min()) >= 0 and float(big.max()) <= 1
    assert torch.equal(normalize(torch.ones(3, 3)), torch.zeros(3, 3))


def test_relevance_rules():
    a = torch.tensor([[[0.5, 0.5], [1.0, 0.0]]])  # 1 head, 2 queries, 2 keys
    g = torch.tensor([[[1.0, -1.0], [2.0, 2.0]]])
    torch.testing.assert_close(gradient_relevance((a, a), (g, g)), 2 * torch.tensor([[0.5, 0.0], [2.0, 0.0]]))
    torch.testing.assert_close(raw_relevance((a, 3 * a)), 2 * a[0])


def test_explain_merges_wordpieces_and_skips_special_tokens():
    # queries: summary, [CLS], "play", "##ful", "cat", [SEP]; 4 regions on a 2x2 grid
    cross = torch.zeros(6, 4)
    cross[2, 0] = 1.0  # "play" looks at region 0
    cross[3, 1] = 0.5  # "##ful" at region 1
    cross[4, 3] = 1.0  # "cat" at region 3
    cross[0, 3] = 1.0  # the summary too
    text_self = torch.zeros(6, 6)
    text_self[0] = torch.tensor([0.4, 0.0, 0.1, 0.1, 0.4, 0.0])
    e = explain(cross, text_self, (2, 2), [None, 0, 0, 1, None], ["playful", "cat"], (20, 20), "gradient")
    assert e.words == ["playful", "cat"]
    assert e.word_scores == [0.5, 1.0]
    assert e.word_maps.shape == (2, 2, 2)
    assert float(e.word_maps[0, 0, 0]) == 1.0 and float(e.word_maps[1, 1, 1]) == 1.0
    assert e.heatmap.shape == (2, 2) and float(e.heatmap[1, 1]) == 1.0  # the summary looks at region 3
    assert e.peak_xy[0] > 10 and e.peak_xy[1] > 10
    with pytest.raises(ValueError, match="method"):
        explain(cross, text_self, (2, 2), [], [], (20, 20), "magic")
