"""A fine-tune that makes its starting checkpoint worse says so in the Fine-tune tab: a checkpoint
trained on coloured squares, fine-tuned from for one epoch at a learning rate far too high, ends
with the sentence that the new model is worse, with both accuracies on the same validation rows.

Skipped where Chromium is not installed, unless MMDEMO_REQUIRE_BROWSER=1.
"""

import csv
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from mmdemo import ui
from mmdemo.app.registry import CheckpointRegistry
from mmdemo.datasets.csv_table import read_csv
from mmdemo.model.checkpoint import save_checkpoint
from mmdemo.training.loop import train
from mmdemo.training.settings import TrainSettings

from ..browser import CHROMIUM, DESKTOP, browser, serve
from ..conftest import tiny_config

if not os.path.exists(CHROMIUM) and os.environ.get("MMDEMO_REQUIRE_BROWSER") != "1":
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect


def _squares(folder) -> tuple[str, str]:
    """40 pictures of a red or blue square, two questions each (its colour; warm or cold): the
    CSV and the zip of the pictures."""
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(40):
        a = np.full((32, 32, 3), 255, np.uint8)
        y, x = rng.integers(4, 24, size=2)
        a[y : y + 8, x : x + 8] = (255, 0, 0) if i % 2 else (0, 0, 255)
        Image.fromarray(a).save(folder / "img" / f"{i}.png")
        rows.append([f"img/{i}.png", "what colour is it?", "red" if i % 2 else "blue"])
        rows.append([f"img/{i}.png", "is it warm or cold?", "warm" if i % 2 else "cold"])
    with open(folder / "squares.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "text", "label"], *rows])
    return str(folder / "squares.csv"), shutil.make_archive(str(folder / "img"), "zip", root_dir=folder, base_dir="img")


def test_a_fine_tune_that_makes_the_model_worse_says_so(tmp_path):
    csv_path, archive = _squares(tmp_path / "data")
    dataset = read_csv(csv_path)
    torch.manual_seed(0)
    settings = TrainSettings(epochs=6, batch_size=16, lr=1e-2, encoder_lr=1e-2, freeze=[], seed=0)
    good = train(dataset, dataset, settings, config=tiny_config(labels=dataset.labels)).model
    save_checkpoint(good, tmp_path / "shipped" / "squares")
    app = ui.App(CheckpointRegistry(tmp_path / "mine", tmp_path / "shipped"), work_dir=str(tmp_path / "work"))
    with serve(app) as url, browser() as chromium:
        page = chromium.new_page(viewport=DESKTOP)
        page.goto(url)
        page.get_by_role("tab", name="Fine-tune").click()
        page.locator("#csv-upload input[type=file]").set_input_files(csv_path)
        page.locator("#zip-upload input[type=file]").set_input_files(archive)
        expect(page.locator("#start-from input")).to_have_value("squares", timeout=30_000)  # it knows the labels
        page.get_by_text("Custom settings (used when Automatic is off)").click()
        page.get_by_label("Epochs").fill("1")
        page.get_by_label("Learning rate").fill("0.1")
        page.locator("#start-button").click()
        status = page.locator("#job-status")
        expect(status).to_contain_text("done", timeout=180_000)
        expect(status).to_contain_text("The new model is worse than the one it started from: validation accuracy")
        expect(status).to_contain_text("for 'squares' on the same 10 validation rows. Keep using 'squares'")
        app.jobs.close()
