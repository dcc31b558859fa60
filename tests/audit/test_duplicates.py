"""Identical content under other names, and near-identical images by their features."""

import numpy as np
import torch
from PIL import Image

from mmdemo.audit.duplicates import content_hash, near_pairs, same_content, unit_rows


def _save(path, pixels, mode="L"):
    Image.fromarray(pixels, mode=mode).save(path)
    return path


def test_the_same_pixels_under_another_name_or_format_have_one_hash(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 12), dtype=np.uint8)
    a = _save(tmp_path / "a.png", pixels)
    b = _save(tmp_path / "b.bmp", pixels)  # another name and format
    c = _save(tmp_path / "c.png", np.stack([pixels] * 3, -1), "RGB")  # the grey scan stored as RGB
    d = _save(tmp_path / "d.png", np.where(pixels == 0, 1, pixels - 1).astype(np.uint8))  # one level darker
    hashes = {p: content_hash(p) for p in (a, b, c, d)}
    assert hashes[a] == hashes[b] == hashes[c] != hashes[d]


def test_each_image_of_a_set_names_another_and_a_pair_names_each_other(tmp_path):
    images = [tmp_path / n for n in ("x", "y", "z", "w", "v")]
    hashes = dict(zip(images, ["h1", "h2", "h1", "h1", "h3"]))
    other = same_content(images, hashes)
    x, y, z, w, v = images
    assert other == {x: z, z: x, w: x}
    assert y not in other and v not in other
    pair = same_content([x, y], {x: "h", y: "h"})
    assert pair == {x: y, y: x}


def test_near_identical_features_pair_up_and_distinct_ones_do_not(tmp_path):
    torch.manual_seed(0)
    features = torch.randn(20, 64)
    features[7] = features[3] + 0.01 * torch.randn(64)  # a slightly changed copy of image 3
    images = [tmp_path / f"{i}.png" for i in range(20)]  # not on disk: too small to thumbnail
    found = near_pairs(images, unit_rows(features), threshold=0.97, skip=set())
    assert set(found) == {images[3], images[7]}
    assert found[images[7]][0] == images[3] and found[images[3]][0] == images[7]
    assert found[images[3]][1] > 0.97
    assert near_pairs(images, unit_rows(features), threshold=0.97, skip={images[3]}) == {}
