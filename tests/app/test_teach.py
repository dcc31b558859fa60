"""Teaching in the app (app/teach.py): what cannot be taught is refused before anything is
saved, in words naming what is wrong; a CSV + zip teaches as pictures do; the new checkpoint is
its visitor's only."""

import shutil

import pytest

from mmdemo.app.teach import MAX_LABEL_CHARS, MAX_PICTURES, teach

from ..browser import make_app
from ..training.test_add_classes import QUESTION, digit_pictures, write_rows


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    app = make_app(tmp_path_factory.mktemp("teach"))
    yield app
    app.close()


@pytest.fixture(scope="module")
def sevens(tmp_path_factory):
    return digit_pictures(tmp_path_factory.mktemp("sevens"), 7, 3)


@pytest.mark.parametrize(
    ("pictures", "text", "label", "message"),
    [
        ([], QUESTION, "7", "Upload a few pictures"),
        (None, "", "7", "Type the text that goes with the pictures"),
        (None, QUESTION, "  ", "Type the new label"),
        (None, QUESTION, "x" * (MAX_LABEL_CHARS + 1), f"the most is {MAX_LABEL_CHARS}"),
        (None, "x" * 3000, "7", "The question has 3,000 characters"),
        ("many", QUESTION, "7", f"the most is {MAX_PICTURES}"),
        ("notes", QUESTION, "7", "notes.txt is not a picture"),
        ("broken", QUESTION, "7", "picture 1: broken.png: not an image"),
    ],
)
def test_what_cannot_be_taught_is_refused_and_nothing_is_saved(app, sevens, tmp_path, pictures, text, label, message):
    owner = app.owner(app.new_token())
    if pictures is None:
        pictures = sevens
    elif pictures == "many":
        pictures = [sevens[0]] * (MAX_PICTURES + 1)
    elif pictures == "notes":
        (tmp_path / "notes.txt").write_text("not a picture")
        pictures = [str(tmp_path / "notes.txt")]
    elif pictures == "broken":
        (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        pictures = [str(tmp_path / "broken.png")]
    with pytest.raises(ValueError, match=message):
        teach(app, owner, "sort-of-clevr", "taught", False, pictures, text, label)
    assert app.registry.owned(owner) == {}


def test_a_csv_and_zip_teach_and_the_checkpoint_is_the_visitors_only(app, sevens, tmp_path):
    folder = tmp_path / "upload"
    (folder / "img").mkdir(parents=True)
    rows = []
    for i, picture in enumerate(sevens):
        shutil.copyfile(picture, folder / "img" / f"{i}.png")
        rows.append({"image": f"img/{i}.png", "text": QUESTION, "label": "7"})
    csv_path = write_rows(tmp_path / "new.csv", rows)
    archive = shutil.make_archive(str(tmp_path / "images"), "zip", root_dir=folder, base_dir="img")
    owner, other = app.owner(app.new_token()), app.owner(app.new_token())
    taught = teach(app, owner, "sort-of-clevr", "sevens", False, None, None, None, csv_path, archive)
    assert taught["examples"] == {"7": 3}
    assert taught["text"] == QUESTION and taught["expected"] == "7"
    assert "sevens" in app.registry.names(owner)
    assert "sevens" not in app.registry.names(other)
    assert app.registry.predictor("sevens", owner).labels[-1] == "7"
    with pytest.raises(ValueError, match="already exists"):  # not replaced unless asked
        teach(app, owner, "sort-of-clevr", "sevens", False, sevens, QUESTION, "8")
    with pytest.raises(ValueError, match="either pictures"):
        teach(app, owner, "sort-of-clevr", "other", False, sevens, QUESTION, "8", csv_path, archive)
