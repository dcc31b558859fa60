"""Batch prediction under torchrun: two CPU processes, each a share of the batches, give the
very file one process writes (same rows, same order, same figures, same per-row errors)."""

import csv
import json
import subprocess
import sys

from PIL import Image


def _predict(*prefix, checkpoint, csv_path, out):
    command = [*prefix, "-m", "mmdemo", "predict", "--checkpoint", str(checkpoint), "--csv", str(csv_path)]
    command += ["--out", str(out), "--batch-size", "3"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_two_processes_write_what_one_writes(tiny_checkpoint, tmp_path):
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(17):
        Image.new("RGB", (30 + i, 28), (15 * i, 90, 255 - 10 * i)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"id": str(i), "image": f"img/{i}.png", "text": f"is this picture {i} a cat" + " really" * (i % 4)})
    rows.insert(7, {"id": "gone", "image": "img/missing.png", "text": "q"})
    with open(tmp_path / "in.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "image", "text"])
        writer.writeheader()
        writer.writerows(rows)

    single = _predict(
        sys.executable, checkpoint=tiny_checkpoint, csv_path=tmp_path / "in.csv", out=tmp_path / "one.csv"
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    sharded = _predict(*torchrun, checkpoint=tiny_checkpoint, csv_path=tmp_path / "in.csv", out=tmp_path / "two.csv")

    one, two = (tmp_path / "one.csv").read_text(), (tmp_path / "two.csv").read_text()
    assert two == one
    out = list(csv.DictReader(open(tmp_path / "two.csv")))
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    assert sum(1 for r in out if r["prediction"]) == 17 and "file not found" in out[7]["error"]
    # one summary line, from rank 0 only
    summaries = [json.loads(line) for line in sharded.strip().splitlines() if line.startswith("{")]
    assert summaries == [json.loads(single.strip().splitlines()[-1]) | {"out": str(tmp_path / "two.csv")}]
