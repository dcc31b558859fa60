"""The validation split: whole groups (a group column, else an image and its near-identical
copies) on one side, the same split for the same seed, and a warning when validation images look
close to training images."""

import csv

import numpy as np
import pytest
from PIL import Image

from mmdemo.datasets.csv_table import read_csv
from mmdemo.datasets.splits import make_split, near_duplicate_groups


def _photo(seed: int, side: int = 64) -> Image.Image:
    """A smooth random picture: low-frequency noise blown up, so two seeds are unlike each other."""
    rng = np.random.default_rng(seed)
    small = (rng.random((6, 6, 3)) * 255).astype(np.uint8)
    return Image.fromarray(small).resize((side, side), Image.BICUBIC)


def _write(folder, rows, header=("image", "text", "label", "source")):
    path = folder / "data.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_a_group_column_keeps_each_group_on_one_side(tmp_path):
    rows = []
    for i in range(40):
        _photo(i).save(tmp_path / f"{i}.png")
        rows += [[f"{i}.png", "what is it?", "a" if i % 2 else "b", f"scene{i // 4}"]]
    dataset = read_csv(_write(tmp_path, rows), group_column="source")
    assert "groups (source): 10" in dataset.report()
    split = make_split(dataset, None, 0.2, seed=3)
    assert split.method == "group column" and split.groups == 10
    train_groups, val_groups = {e.group for e in split.train}, {e.group for e in split.val}
    assert val_groups and not train_groups & val_groups
    assert "whole groups of the group column" in split.describe()
    again = make_split(dataset, None, 0.2, seed=3)
    assert [e.row for e in again.val] == [e.row for e in split.val]


def test_a_missing_group_column_is_named(tmp_path):
    _photo(0).save(tmp_path / "0.png")
    path = _write(tmp_path, [["0.png", "what is it?", "a", "s"]])
    with pytest.raises(ValueError, match="missing column.*'scene'"):
        read_csv(path, group_column="scene")


def test_rows_with_an_empty_group_are_grouped_by_image(tmp_path):
    rows = []
    for i in range(10):
        _photo(i).save(tmp_path / f"{i}.png")
        for question in ("one?", "two?"):
            rows.append([f"{i}.png", question, "a" if i % 2 else "b", "" if i < 4 else f"g{i // 5}"])
    dataset = read_csv(_write(tmp_path, rows), group_column="source")
    assert "8 rows with an empty source are grouped by their image" in dataset.report()
    for seed in range(5):
        split = make_split(dataset, None, 0.3, seed)
        train_images = {e.image for e in split.train}
        assert not train_images & {e.image for e in split.val}


def test_copies_of_a_picture_are_kept_with_it(tmp_path):
    """A re-saved JPEG, a black-and-white copy and an upside-down copy of one picture are one
    group; pictures that differ are not merged."""
    images = []
    for i in range(12):
        path = tmp_path / f"p{i}.png"
        _photo(i).save(path)
        images.append(path)
    original = _photo(0)
    copies = [tmp_path / "copy.jpg", tmp_path / "grey.png", tmp_path / "turned.png"]
    original.save(copies[0], quality=60)
    original.convert("L").convert("RGB").save(copies[1])
    original.rotate(180).save(copies[2])
    leader = near_duplicate_groups(tuple(sorted(images + copies)))
    assert {leader[c] for c in copies} == {leader[images[0]]}
    assert len({leader[p] for p in images}) == len(images)
    rows = [[p.name, "what is it?", "a" if k % 2 else "b", ""] for k, p in enumerate(sorted(images + copies))]
    dataset = read_csv(_write(tmp_path, rows))
    for seed in range(6):
        split = make_split(dataset, None, 0.3, seed)
        sides = {e.image in {v.image for v in split.val} for e in dataset.examples if e.image in copies + images[:1]}
        assert len(sides) == 1, "a copy was split from its picture"
    assert "3 near-identical images kept with the image they copy" in split.describe()


def test_small_images_are_never_merged(tmp_path):
    """8 x 8 scans of one digit look alike at any thumbnail size without being copies."""
    images = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        pixels = np.zeros((8, 8), np.uint8)
        pixels[1:7, 3 + (i % 2)] = 255
        Image.fromarray(pixels).save(path)
        images.append(path)
    leader = near_duplicate_groups(tuple(images))
    assert all(leader[p] == p for p in images)


def test_validation_crops_of_the_training_pictures_are_flagged(tmp_path):
    """Overlapping crops of the same few pictures: the split warns that validation flatters."""
    rows = []
    for picture in range(3):
        big = _photo(100 + picture, side=256)
        for k in range(20):
            x, y = 6 * (k % 5), 6 * (k // 5)
            big.crop((x, y, x + 128, y + 128)).save(tmp_path / f"{picture}_{k}.png")
            rows.append([f"{picture}_{k}.png", "what is it?", str(picture), ""])
    split = make_split(read_csv(_write(tmp_path, rows)), None, 0.2, seed=0)
    assert split.close_share is not None and split.close_share > 0.3
    assert "look close to a training image" in split.describe()


def test_distinct_pictures_are_not_flagged(tmp_path):
    rows = []
    for i in range(30):
        _photo(i).save(tmp_path / f"{i}.png")
        rows.append([f"{i}.png", "what is it?", "a" if i % 2 else "b", ""])
    split = make_split(read_csv(_write(tmp_path, rows)), None, 0.2, seed=0)
    assert split.close_share is not None and split.close_share <= 0.3
    assert "look close" not in split.describe()


def test_crops_of_the_same_pictures_hold_out_those_least_like_the_rest(tmp_path):
    """Many overlapping crops from one part of each picture and a few from far-off parts: the
    split holds out the far-off ones (as new parts of the pictures would be), every picture's
    answer keeps its share of the validation rows, and it says how it chose them."""
    rows, far = [], set()
    for picture in range(4):
        big = _photo(200 + picture, side=320)
        for k in range(24):  # one part: neighbours a few pixels apart
            x, y = 4 * (k % 6), 4 * (k // 6)
            big.crop((x, y, x + 128, y + 128)).save(tmp_path / f"{picture}_near{k}.png")
            rows.append([f"{picture}_near{k}.png", "what is it?", str(picture), ""])
        for k in range(4):  # far-off parts, apart from each other too
            x, y = 190 - 60 * (k % 2), 190 - 60 * (k // 2)
            big.crop((x, y, x + 128, y + 128)).save(tmp_path / f"{picture}_far{k}.png")
            rows.append([f"{picture}_far{k}.png", "what is it?", str(picture), ""])
            far.add(f"{picture}_far{k}.png")
    dataset = read_csv(_write(tmp_path, rows))
    split = make_split(dataset, None, 0.1, seed=0)
    assert split.method == "far images"
    held = {e.image.name for e in split.val}
    assert held and held <= far
    assert {e.label for e in split.val} == {"0", "1", "2", "3"}
    assert "least like any other" in split.describe() and "looked close to a training image" in split.describe()
    assert [e.row for e in make_split(dataset, None, 0.1, seed=0).val] == [e.row for e in split.val]


def test_distinct_pictures_keep_the_random_split(tmp_path):
    rows = []
    for i in range(30):
        _photo(i).save(tmp_path / f"{i}.png")
        rows.append([f"{i}.png", "what is it?", "a" if i % 2 else "b", ""])
    assert make_split(read_csv(_write(tmp_path, rows)), None, 0.2, seed=0).method == "image"
