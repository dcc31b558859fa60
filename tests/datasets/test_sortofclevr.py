"""Sort-of-CLEVR generator: answers checked against geometry on hand-built scenes."""

import csv

import numpy as np
import pytest

from mmdemo.datasets.sortofclevr import (
    COLORS,
    HELD_OUT,
    LABELS,
    PHRASINGS,
    SceneObject,
    answer,
    generate,
    random_scene,
    render,
)


def scene(*objects):
    return [SceneObject(c, s, x, y) for c, s, x, y in objects]


BASE = scene(
    ("red", "circle", 10, 10),
    ("green", "square", 30, 10),
    ("blue", "square", 60, 60),
    ("orange", "circle", 10, 60),
    ("gray", "circle", 60, 10),
    ("yellow", "square", 37, 38),
)


def test_non_relational_answers():
    assert answer(BASE, "shape", "red") == ("circle", None)
    assert answer(BASE, "shape", "blue") == ("square", None)
    assert answer(BASE, "horizontal", "red")[0] == "left"
    assert answer(BASE, "horizontal", "gray")[0] == "right"
    assert answer(BASE, "vertical", "red")[0] == "top"
    assert answer(BASE, "vertical", "orange")[0] == "bottom"


def test_the_37_5_line():
    s = scene(
        ("red", "circle", 37, 38),
        ("green", "square", 38, 37),
        ("blue", "circle", 37.5, 37.5),
        ("orange", "circle", 5, 5),
        ("gray", "circle", 69, 69),
        ("yellow", "circle", 5, 69),
    )
    assert answer(s, "horizontal", "red")[0] == "left" and answer(s, "vertical", "red")[0] == "bottom"
    assert answer(s, "horizontal", "green")[0] == "right" and answer(s, "vertical", "green")[0] == "top"
    # exactly on the line is not "< 37.5": right and bottom
    assert answer(s, "horizontal", "blue")[0] == "right" and answer(s, "vertical", "blue")[0] == "bottom"


def test_closest_furthest_and_count():
    label, obj = answer(BASE, "closest", "red")
    assert (label, obj.color) == ("square", "green")  # 20 px away
    label, obj = answer(BASE, "furthest", "red")
    assert (label, obj.color) == ("square", "blue")
    label, obj = answer(BASE, "closest", "blue")
    assert obj.color == "yellow"
    assert answer(BASE, "count", "red") == ("3", None)  # red, orange, gray
    assert answer(BASE, "count", "green") == ("3", None)
    lone = scene(("red", "square", 10, 10), *[(c, "circle", 10 + 12 * i, 50) for i, c in enumerate(list(COLORS)[1:])])
    assert answer(lone, "count", "red")[0] == "1" and answer(lone, "count", "green")[0] == "5"


def test_distance_ties_go_to_the_first_colour():
    s = scene(
        ("red", "circle", 40, 40),
        ("green", "square", 40, 20),
        ("blue", "circle", 40, 60),
        ("orange", "circle", 5, 5),
        ("gray", "circle", 69, 5),
        ("yellow", "circle", 5, 69),
    )
    label, obj = answer(s, "closest", "red")  # green and blue are both 20 px away
    assert obj.color == "green" and label == "square"
    s2 = [
        SceneObject("red", "circle", 40, 40),
        SceneObject("green", "circle", 40, 20),
        SceneObject("blue", "square", 40, 60),
    ] + s[3:]
    assert answer(s2, "closest", "red")[1].color == "green"


def test_random_scenes_follow_the_spec():
    rng = np.random.default_rng(0)
    shapes = []
    for _ in range(300):
        objs = random_scene(rng)
        assert [o.color for o in objs] == list(COLORS)
        for o in objs:
            assert 5 <= o.x < 70 and 5 <= o.y < 70 and o.x == int(o.x)
            shapes.append(o.shape)
        for i, a in enumerate(objs):
            for b in objs[i + 1 :]:
                assert (a.x - b.x) ** 2 + (a.y - b.y) ** 2 >= 100
    assert 0.45 < shapes.count("circle") / len(shapes) < 0.55


def test_render_draws_each_object_in_its_colour():
    image = np.asarray(render(BASE))
    assert image.shape == (75, 75, 3)
    assert tuple(image[0, 0]) == (255, 255, 255)
    for o in BASE:
        assert tuple(image[int(o.y), int(o.x)]) == COLORS[o.color]
    # a square fills its corners, a circle does not
    assert tuple(image[10 - 4, 30 - 4]) == COLORS["green"]
    assert tuple(image[10 - 5, 10 - 5]) == (255, 255, 255)


def test_generate_writes_the_standard_csv(tmp_path):
    path = generate(tmp_path / "d", n_images=5, seed=3)
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == 100 and list(rows[0])[:3] == ["image", "text", "label"]
    assert all((tmp_path / "d" / r["image"]).is_file() for r in rows)
    assert {r["label"] for r in rows} <= set(LABELS)
    for image in {r["image"] for r in rows}:
        mine = [r for r in rows if r["image"] == image]
        assert sum(r["relational"] == "1" for r in mine) == 10
    train_texts = {t.format(c=c) for ts in PHRASINGS.values() for t in ts for c in COLORS}
    assert {r["text"] for r in rows} <= train_texts
    held = list(csv.DictReader(open(generate(tmp_path / "h", 3, seed=3, phrasing="held-out"))))
    assert {r["text"] for r in held} <= {t.format(c=c) for ts in HELD_OUT.values() for t in ts for c in COLORS}
    assert not ({r["text"] for r in held} & train_texts)
    with pytest.raises(ValueError, match="phrasing"):
        generate(tmp_path / "x", 1, seed=0, phrasing="pirate")


def test_the_tasks_set_answers_four_questions_about_the_object_each_row_names(tmp_path):
    import csv

    from mmdemo.datasets.csv_table import read_csv
    from mmdemo.datasets.sortofclevr import TASK_COLUMNS, generate_tasks

    path = generate_tasks(tmp_path, 5, seed=2, per_image=3)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 15 and len({r["color"] for r in rows[:3]}) == 3  # distinct objects per scene
    for row in rows:
        assert row["color"] in row["text"]
        assert row["shape"] in ("circle", "square") and row["nearest_shape"] in ("circle", "square")
        assert row["side"] in ("left", "right") and row["height"] in ("top", "bottom")
    ds = read_csv(path, label_column=list(TASK_COLUMNS))
    assert ds.tasks == list(TASK_COLUMNS) and not ds.rejected
