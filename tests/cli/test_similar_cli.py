"""``python -m mmdemo similar``: one JSON object per line, most similar first; a checkpoint
without an index is a clear error with exit code 2."""

import json
import shutil

from mmdemo.cli import main

from ..similar_rows import LABELS, TEXTS, indexed_checkpoint, write_noise_rows


def test_similar_prints_k_json_lines_most_similar_first(tmp_path, capsys):
    checkpoint, csv_path = indexed_checkpoint(tmp_path)
    image = csv_path.parent / "img" / "3.png"
    code = main(["similar", "--checkpoint", str(checkpoint), "--image", str(image), "--text", TEXTS[1], "--k", "4"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(lines) == 4
    rows = [json.loads(line) for line in lines]
    assert all(set(row) == {"image", "text", "label", "similarity"} for row in rows)
    assert [r["similarity"] for r in rows] == sorted((r["similarity"] for r in rows), reverse=True)
    # the asked training row itself comes first, as the CSV names it, with its own label
    assert (rows[0]["image"], rows[0]["text"], rows[0]["label"]) == ("img/3.png", TEXTS[1], LABELS[(3 + 1) % 3])
    assert rows[0]["similarity"] > 0.999 and all(r["label"] in LABELS for r in rows)


def test_similar_without_an_index_says_so_and_exits_2(tiny_checkpoint, fixture_path, capsys):
    code = main(
        ["similar", "--checkpoint", str(tiny_checkpoint), "--image", fixture_path("chelsea.jpg"), "--text", "x"]
    )
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert "has no similar-examples index" in captured.err and "index-similar" in captured.err


def test_index_similar_builds_an_index_from_a_csv(tmp_path, tiny_checkpoint, capsys):
    checkpoint = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint, checkpoint)
    csv_path = write_noise_rows(tmp_path / "data", images=3)
    assert main(["index-similar", "--checkpoint", str(checkpoint), "--csv", str(csv_path)]) == 0
    built = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert built["rows"] == 12 and built["images"] == 3 and built["thumbnails"] == 3
    assert main(["similar", "--checkpoint", str(checkpoint), "--image", str(csv_path.parent / "img" / "0.png"),
                 "--text", TEXTS[0], "--k", "1"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["image"] == "img/0.png"
