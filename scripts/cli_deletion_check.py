"""Deletion through the public CLI: does blanking the heatmap's peak change the answer more
often than blanking a random spot?

Only the public command line is used (``python -m mmdemo make-sort-of-clevr`` and
``python -m mmdemo predict --csv``): fresh scenes are answered once, then every image is
answered again with a square (12x12 px by default) blanked, in the scene's background colour,
centred on the peak the CSV reports (``peak_x``, ``peak_y``), and once more with the same
square at a random spot. The answer "flips" when the prediction changes. Prints one JSON line:
the flip rates at the peak and at random spots, their ratio, and the same per question kind.

    python scripts/cli_deletion_check.py --images 30 --method raw
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image


def cli(*args: str) -> dict:
    """Run ``python -m mmdemo ARGS`` and return its last stdout line as JSON."""
    done = subprocess.run([sys.executable, "-m", "mmdemo", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"python -m mmdemo {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def blanked(image: Image.Image, cx: float, cy: float, size: int) -> Image.Image:
    """A copy with a ``size`` x ``size`` square centred on (cx, cy) filled with the background
    (the image's per-channel median: white for a scene), clipped to the image."""
    a = np.asarray(image.convert("RGB")).copy()
    fill = np.median(a.reshape(-1, 3), axis=0).astype(np.uint8)
    x0, y0 = int(round(cx - size / 2)), int(round(cy - size / 2))
    a[max(0, y0) : max(0, y0 + size), max(0, x0) : max(0, x0 + size)] = fill
    return Image.fromarray(a)


def predict_variant(rows: list[dict], root: Path, folder: Path, centres: list[tuple[float, float]], args) -> list[dict]:
    """Write each row's image with the square at its centre, answer them all through the CLI."""
    folder.mkdir()
    out_rows = []
    for i, (row, (cx, cy)) in enumerate(zip(rows, centres)):
        name = f"{i:05d}.png"
        blanked(Image.open(root / row["image"]), cx, cy, args.square).save(folder / name)
        out_rows.append({"image": name, "text": row["text"]})
    with open(folder / "data.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "text"])
        writer.writeheader()
        writer.writerows(out_rows)
    cli("predict", "--csv", str(folder / "data.csv"), "--out", str(folder / "answers.csv"), *args.extra)
    return read(folder / "answers.csv")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=30, help="fresh scenes (20 questions each)")
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--square", type=int, default=12, help="side of the blanked square, pixels")
    parser.add_argument("--method", default="raw", help="explanation method (default: the CLI's default, raw)")
    parser.add_argument("--checkpoint", help="checkpoint folder (default: the CLI's default)")
    args = parser.parse_args()
    args.extra = ["--method", args.method] + (["--checkpoint", args.checkpoint] if args.checkpoint else [])
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="mmdemo-deletion-") as scratch:
        scratch = Path(scratch)
        data = Path(cli("make-sort-of-clevr", "--out", str(scratch / "scenes"), "--images", str(args.images),
                        "--seed", str(args.seed), "--phrasing", "canonical")["csv"])  # fmt: skip
        cli("predict", "--csv", str(data), "--out", str(scratch / "answers.csv"), *args.extra)
        rows = [r for r in read(scratch / "answers.csv") if not r["error"]]
        width, height = Image.open(data.parent / rows[0]["image"]).size
        peaks = [(float(r["peak_x"]), float(r["peak_y"])) for r in rows]
        half = args.square / 2
        spots = [(float(rng.uniform(half, width - half)), float(rng.uniform(half, height - half))) for _ in rows]
        at_peak = predict_variant(rows, data.parent, scratch / "peak", peaks, args)
        at_random = predict_variant(rows, data.parent, scratch / "random", spots, args)
    flips = defaultdict(lambda: {"n": 0, "peak": 0, "random": 0})
    for row, p, r in zip(rows, at_peak, at_random):
        for key in ("all", row["qtype"]):
            flips[key]["n"] += 1
            flips[key]["peak"] += p["prediction"] != row["prediction"]
            flips[key]["random"] += r["prediction"] != row["prediction"]

    def rates(f: dict) -> dict:
        peak, random = f["peak"] / f["n"], f["random"] / f["n"]
        return {"n": f["n"], "flip_at_peak": round(peak, 4), "flip_at_random": round(random, 4),
                "ratio": round(peak / random, 1) if random else None}  # fmt: skip

    everything = rates(flips.pop("all"))
    print(json.dumps({
        "method": args.method, "images": args.images, "seed": args.seed, "square": args.square, **everything,
        "passes_3x": everything["flip_at_peak"] > 0 and (everything["ratio"] is None or everything["ratio"] >= 3),
        "per_qtype": {q: rates(f) for q, f in sorted(flips.items())},
        "seconds": round(time.perf_counter() - start, 1),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
