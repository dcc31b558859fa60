"""scripts/cli_deletion_check.py: the square it blanks, and one run through the public CLI on
the tiny checkpoint (fresh scenes -> predict --csv -> blank at the peak / at random -> predict)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cli_deletion_check.py"
spec = importlib.util.spec_from_file_location("cli_deletion_check", SCRIPT)
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)


def test_blanked_square_is_centred_and_clipped():
    a = np.full((75, 75, 3), 255, np.uint8)
    a[30:40, 30:40] = (255, 0, 0)
    out = np.asarray(check.blanked(Image.fromarray(a), 35, 35, 12))
    assert (out == 255).all()  # the 10x10 object under a 12x12 square is gone
    corner = np.asarray(check.blanked(Image.fromarray(a), 0, 0, 12))
    assert np.array_equal(corner, a)  # the corner square lies on background: nothing else changes
    a[:5, :5] = 0
    corner = np.asarray(check.blanked(Image.fromarray(a), 0, 0, 12))
    assert (corner[:6, :6] == 255).all() and (corner[6:, 6:] == a[6:, 6:]).all()


def test_one_run_through_the_cli(tiny_checkpoint):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--images", "1", "--checkpoint", str(tiny_checkpoint)],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["n"] == 20 and result["square"] == 12 and result["method"] == "raw"
    assert 0 <= result["flip_at_peak"] <= 1 and 0 <= result["flip_at_random"] <= 1
    assert sum(q["n"] for q in result["per_qtype"].values()) == 20
