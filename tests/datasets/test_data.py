"""CSV reading and validation: every rejection reason is reported with its row."""

import csv

import pytest
from PIL import Image

from mmdemo.datasets.csv_table import check_trainable, read_csv


def write_csv(path, rows, fields=("image", "text", "label")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        writer.writerows(rows)
    return path


@pytest.fixture
def images(tmp_path):
    (tmp_path / "img").mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "img" / f"{name}.png")
    (tmp_path / "img" / "bad.png").write_bytes(b"not a png")
    (tmp_path / "img" / "empty.jpg").write_bytes(b"")
    return tmp_path


def test_rows_are_accepted_or_reported_with_their_row_number(images):
    path = write_csv(
        images / "d.csv",
        [
            ["img/a.png", "a red cat", "01"],  # row 2
            ["img/b.png", "a dog", "1"],  # row 3
            ["img/missing.png", "x", "1"],  # row 4
            ["img/bad.png", "x", "1"],  # row 5
            ["img/c.png", "", "1"],  # row 6
            ["img/c.png", "text", ""],  # row 7
            ["", "text", "1"],  # row 8
            ["img/empty.jpg", "t", "1"],  # row 9
            ["img/c.png", "again", "1"],  # row 10
        ],
    )
    ds = read_csv(path)
    assert [e.row for e in ds.examples] == [2, 3, 10]
    reasons = dict(ds.rejected)
    assert sorted(reasons) == [4, 5, 6, 7, 8, 9]
    assert reasons[4] == "image not found: img/missing.png"
    assert "img/bad.png: not an image" in reasons[5]
    assert reasons[6] == "empty text" and reasons[7] == "empty label" and reasons[8] == "empty image"
    assert "img/empty.jpg: the file is empty" in reasons[9]
    assert ds.labels == ["01", "1"]  # labels stay strings: "01" is not "1"
    assert ds.class_counts == {"01": 1, "1": 2}
    report = ds.report()
    assert "3 rows accepted, 6 rejected" in report and "row 4: image not found" in report


def test_missing_columns_name_expected_and_found(images):
    path = write_csv(images / "d.csv", [["img/a.png", "t"]], fields=("picture", "text"))
    with pytest.raises(
        ValueError,
        match=r"missing column\(s\) \['image', 'label'\]; expected \['image', 'text', 'label'\], found \['picture', 'text'\]",
    ):
        read_csv(path)
    ds = read_csv(path, image_column="picture", label_column="text")  # other names via arguments
    assert len(ds.examples) == 1


def test_fewer_than_two_classes_and_no_valid_rows(images):
    ds = read_csv(write_csv(images / "one.csv", [["img/a.png", "t", "x"], ["img/b.png", "u", "x"]]))
    with pytest.raises(ValueError, match="at least 2 classes, found 1"):
        check_trainable(ds)
    ds = read_csv(write_csv(images / "none.csv", [["img/missing.png", "t", "x"]]))
    with pytest.raises(ValueError, match="no valid rows.*row 2: image not found"):
        check_trainable(ds)


def test_imbalance_warning(images):
    rows = [["img/a.png", f"t{i}", "big"] for i in range(10)] + [["img/b.png", "u", "small"]]
    ds = read_csv(write_csv(images / "d.csv", rows))
    assert ds.warnings and "'big' has 10 rows, 'small' only 1" in ds.warnings[0]
    balanced = read_csv(write_csv(images / "e.csv", rows[:2] + [["img/b.png", "u", "small"]] * 2))
    assert balanced.warnings == []


def test_confined_paths_cannot_escape_the_upload_folder(images):
    outside = images.parent / "outside.png"
    Image.new("RGB", (4, 4)).save(outside)
    path = write_csv(
        images / "d.csv",
        [
            ["img/a.png", "t", "x"],
            [str(outside), "t", "y"],
            ["../outside.png", "t", "y"],
            ["img/../img/b.png", "t", "y"],
        ],
    )
    ds = read_csv(path, confine=True)
    assert [e.row for e in ds.examples] == [2]
    reasons = dict(ds.rejected)
    assert "must be relative" in reasons[3] and "must be relative" in reasons[4] and "without '..'" in reasons[5]
    assert len(read_csv(path).examples) == 4  # a trusted local CSV may point anywhere


def test_column_roles_are_guessed_from_the_content(tmp_path):
    from mmdemo.datasets.csv_table import guess_columns

    (tmp_path / "pics").mkdir()
    rows = []
    for i in range(26):
        Image.new("RGB", (8, 8)).save(tmp_path / "pics" / f"{i}.png")
        rows.append([f"pics/{i}.png", f"a small picture of thing {i} on a table", ["cat", "dog", "bird"][i % 3]])
    guess = guess_columns(["filename", "caption", "category"], rows, tmp_path)
    assert (guess.image, guess.text, guess.label) == ("filename", "caption", "category") and not guess.unsure
    # order and names do not matter: the content decides
    shuffled = [[r[2], r[0], r[1]] for r in rows]
    guess = guess_columns(["a", "b", "c"], shuffled, tmp_path)
    assert (guess.image, guess.text, guess.label) == ("b", "c", "a")
    # image files found under the root count even without an image extension
    for i in range(3):
        (tmp_path / f"blob{i}").write_bytes(b"x")
    guess = guess_columns(
        ["id", "text", "label"], [[f"blob{i}", "some words here", "x" if i else "y"] for i in range(3)], tmp_path
    )
    assert guess.image == "id"


def test_column_guess_says_when_it_is_unsure():
    from mmdemo.datasets.csv_table import guess_columns

    rows = [[f"q{i}", f"question number {i}", str(i)] for i in range(10)]  # no image column, every label distinct
    guess = guess_columns(["id", "question", "answer"], rows)
    assert guess.unsure and guess.image is None
    assert any("no column of image file names" in r for r in guess.reasons)
    assert any("pick the label column" in r for r in guess.reasons) and guess.label == "answer"  # the name fills in
    # a header without rows: names only
    guess = guess_columns(["Path", "Question", "Answer", "extra"], [])
    assert (guess.image, guess.text, guess.label) == ("Path", "Question", "Answer") and guess.unsure


def test_missing_images_get_one_hint_about_the_zip(tmp_path):
    from mmdemo.datasets.csv_table import missing_images_hint

    (tmp_path / "d.csv").write_text("image,text,label\n" + "".join(f"img/{i}.png,hi,a\n" for i in range(26)))
    dataset = read_csv(tmp_path / "d.csv")
    assert len(dataset.rejected) == 26
    assert "add the zip of the images" in missing_images_hint(dataset, zip_uploaded=False)
    assert "not in the zip" in missing_images_hint(dataset, zip_uploaded=True)


@pytest.mark.parametrize("separator, named", [(";", "';' (semicolon)"), ("\t", "tab"), ("|", "'|' (bar)")])
def test_a_csv_separated_otherwise_is_read_and_the_report_names_the_separator(images, separator, named):
    path = images / "d.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f, delimiter=separator).writerows(
            [["image", "text", "label"], ["img/a.png", "a red cat; small", "cat"], ["img/b.png", "a dog, big", "dog"]]
        )
    dataset = read_csv(path)
    assert [(e.text, e.label) for e in dataset.examples] == [("a red cat; small", "cat"), ("a dog, big", "dog")]
    assert f"columns separated by {named}" in dataset.report()


def test_the_separator_comes_from_the_header_line_and_a_comma_is_not_named(images):
    from mmdemo.datasets.csv_table import sniff_separator

    assert sniff_separator("image,text,label\r\n") == ","
    assert sniff_separator("image;text;label\n") == ";"
    assert sniff_separator("image\n") == ","  # one column: nothing to tell
    assert sniff_separator('"a;b",c\n') == ","  # a quoted separator is a value
    path = write_csv(images / "d.csv", [["img/a.png", "x; y", "cat"]])
    assert read_csv(path).separator == "," and "separated" not in read_csv(path).report()


def test_a_text_of_invisible_characters_only_is_empty(images):
    path = write_csv(images / "d.csv", [["img/a.png", "\u200b\u200d", "cat"], ["img/b.png", "\u200bhi", "dog"]])
    dataset = read_csv(path)
    assert dataset.rejected == [(2, "empty text")]
    assert [e.text for e in dataset.examples] == ["\u200bhi"]


def test_missing_images_are_named_by_spreadsheet_row_and_file(tmp_path):
    from mmdemo.datasets.csv_table import missing_images_hint

    (tmp_path / "d.csv").write_text("image,text,label\n" + "".join(f"img/{i}.png,hi,a\n" for i in range(8)))
    hint = missing_images_hint(read_csv(tmp_path / "d.csv"), zip_uploaded=True)
    assert "8 rows name images that are not in the zip" in hint
    # the header is row 1: img/0.png is on row 2
    assert (
        "(row 2 (img/0.png), row 3 (img/1.png), row 4 (img/2.png), row 5 (img/3.png), row 6 (img/4.png) and 3 more)"
        in hint
    )
