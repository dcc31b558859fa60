"""Several label columns in a real browser: ticking two label columns in the Fine-tune tab
trains one model; Predict & Explain shows its answer for each task, and switching the task
redraws the heatmap from that task's answer.

Skipped where Chromium is not installed, unless MMDEMO_REQUIRE_BROWSER=1.
"""

import csv
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from ..browser import CHROMIUM, DESKTOP, browser, make_app, serve

if not os.path.exists(CHROMIUM) and os.environ.get("MMDEMO_REQUIRE_BROWSER") != "1":
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("browser-tasks"))


@pytest.fixture(scope="module")
def url(app):
    with serve(app) as url:
        yield url


@pytest.fixture(scope="module")
def two_label_columns(tmp_path_factory):
    """32 pictures of a red or blue square on the left or the right; a CSV
    image,question,colour,place (two label columns) and the zip of the pictures."""
    folder = tmp_path_factory.mktemp("two-tasks")
    (folder / "pics").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(32):
        red, left = i % 2 == 0, (i // 2) % 2 == 0
        a = np.full((32, 32, 3), 255, np.uint8)
        y, x = int(rng.integers(4, 20)), int(rng.integers(1, 8)) if left else int(rng.integers(18, 24))
        a[y : y + 8, x : x + 8] = (255, 0, 0) if red else (0, 0, 255)
        Image.fromarray(a).save(folder / "pics" / f"{i}.png")
        rows.append(
            [f"pics/{i}.png", "tell me about the square", "red" if red else "blue", "left" if left else "right"]
        )
    with open(folder / "tasks.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "question", "colour", "place"], *rows])
    archive = shutil.make_archive(str(folder / "pics"), "zip", root_dir=folder, base_dir="pics")
    return str(folder / "tasks.csv"), archive, str(folder / "pics" / "1.png")


def test_two_ticked_label_columns_train_one_model_that_answers_both(url, app, two_label_columns):
    csv_path, archive, picture = two_label_columns
    with browser() as chromium:
        context = chromium.new_context(viewport=DESKTOP)
        page = context.new_page()
        page.goto(url)
        page.get_by_role("tab", name="Fine-tune").click()
        page.locator("#csv-upload input[type=file]").set_input_files(csv_path)
        ticked = page.locator("#label-column label.selected")
        expect(ticked).to_have_count(1, timeout=30_000)  # the guess: one label column
        for name in ("colour", "place"):
            box = page.locator("#label-column label").filter(has_text=name)
            if "selected" not in (box.get_attribute("class") or ""):
                box.click()
        expect(ticked).to_have_text(["colour", "place"], use_inner_text=True)
        page.locator("#zip-upload input[type=file]").set_input_files(archive)
        expect(page.locator("#zip-upload").get_by_role("cell", name="pics.zip", exact=True)).to_be_visible(
            timeout=30_000
        )
        page.get_by_role("button", name="Check data").click()
        expect(page.locator("#preflight")).to_contain_text("2 tasks, one per label column", timeout=60_000)
        page.get_by_label("Time budget (minutes)").fill("1")
        page.locator("#checkpoint-name textarea, #checkpoint-name input").first.fill("two-tasks")
        page.locator("#start-button").click()
        expect(page.locator("#job-status")).to_contain_text("done", timeout=300_000)
        expect(page.locator("#per-class")).to_contain_text("place: left", timeout=30_000)  # every task's classes

        record = next(r for r in app.jobs.records() if r["checkpoint"] == "two-tasks")
        assert record["data"]["label_column"] == ["colour", "place"]  # one job, one model

        page.get_by_role("tab", name="Predict & Explain").click()
        page.locator("#checkpoint input").click()
        page.get_by_role("option", name="two-tasks", exact=True).click()
        expect(page.locator("#task")).to_be_visible(timeout=30_000)  # this checkpoint answers two tasks
        page.locator("#image-input input[type=file]").set_input_files(picture)
        page.locator("#text-input textarea").fill("tell me about the square")
        page.locator("#predict-button").click()
        answers = page.locator("#task-answers")
        expect(answers).to_contain_text("colour (explained below)", timeout=180_000)
        expect(answers).to_contain_text("place")
        task = page.locator("#task")
        expect(task).to_be_visible()
        overlay = page.locator("#overlay img")
        expect(overlay).to_be_visible(timeout=30_000)
        before = overlay.screenshot()

        task.get_by_label("place").check()  # the other task: its answer is explained
        expect(answers).to_contain_text("place (explained below)", timeout=60_000)
        expect(page.locator("#method input[value=gradient]")).to_be_checked()  # task-specific maps
        page.wait_for_function("() => document.querySelector('#overlay img').complete", timeout=30_000)
        assert overlay.screenshot() != before  # another task's answer: another heatmap
        context.close()
