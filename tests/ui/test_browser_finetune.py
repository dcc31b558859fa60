"""The Fine-tune tab in a real browser: a CSV `filename,caption,category` gets its column roles
from the content, a CSV without its zip gets one hint to add the zip, "Start from" follows the
labels, the form and the tab survive a reload (also mid-training), the layout fits a phone;
Check data shows the recipe's plan and time estimate (a custom Epochs changes only the epochs),
a job keeps its time budget, and a job interrupted by a server restart shows Resume to its
owner, which continues it.

Skipped where Chromium is not installed, unless MMDEMO_REQUIRE_BROWSER=1.
"""

import csv
import os
import re
import shutil
import time

import pytest
from PIL import Image

from ..browser import CHROMIUM, DESKTOP, PHONE, blocks_layout, browser, make_app, serve

if not os.path.exists(CHROMIUM) and os.environ.get("MMDEMO_REQUIRE_BROWSER") != "1":
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("browser-finetune"))


@pytest.fixture(scope="module")
def url(app):
    with serve(app) as url:
        yield url


@pytest.fixture(scope="module")
def chromium():
    with browser() as chromium:
        yield chromium


def open_tab(chromium, url, viewport=DESKTOP):
    context = chromium.new_context(viewport=viewport)
    page = context.new_page()
    page.goto(url)
    page.get_by_role("tab", name="Fine-tune").click()
    expect(page.locator("#start-button")).to_be_visible(timeout=30_000)
    return context, page


@pytest.fixture(scope="module")
def three_columns(tmp_path_factory):
    """26 pictures, a CSV filename,caption,category and the zip of the pictures."""
    folder = tmp_path_factory.mktemp("three-columns")
    (folder / "pics").mkdir()
    rows = []
    for i in range(26):
        colour = "red" if i % 2 else "blue"
        Image.new("RGB", (32, 32), (255, 0, 0) if i % 2 else (0, 0, 255)).save(folder / "pics" / f"{i}.png")
        rows.append([f"pics/{i}.png", f"a small {colour} picture, number {i}", colour])
    with open(folder / "three.csv", "w", newline="") as f:
        csv.writer(f).writerows([["filename", "caption", "category"], *rows])
    archive = shutil.make_archive(str(folder / "pics"), "zip", root_dir=folder, base_dir="pics")
    return str(folder / "three.csv"), archive


def column(page, elem_id):
    return page.locator(f"#{elem_id} input")


def ticked(page, elem_id):
    """The ticked boxes of a checkbox group (the label columns), by their text."""
    return page.locator(f"#{elem_id} label.selected")


def picked(page, elem_id):
    """The values picked in a multi-select dropdown (the text columns), in order."""
    return page.locator(f"#{elem_id} .token > span")


def open_custom_settings(page):
    page.get_by_text("Custom settings (used when Automatic is off)").click()
    expect(page.get_by_label("Epochs")).to_be_visible(timeout=10_000)


def test_three_column_csv_gets_its_roles_and_a_hint_for_the_missing_zip(chromium, url, three_columns):
    csv_path, archive = three_columns
    context, page = open_tab(chromium, url)
    page.locator("#csv-upload input[type=file]").set_input_files(csv_path)
    expect(ticked(page, "label-column")).to_have_text(["category"], timeout=30_000)
    expect(column(page, "image-column")).to_have_value("filename")
    expect(picked(page, "text-column")).to_have_text(["caption"])
    expect(page.locator("#columns-note")).to_contain_text("2 distinct values in 26 rows")
    # labels no shipped checkpoint knows: start from a new model
    expect(column(page, "start-from")).to_have_value("(new model)")

    page.get_by_role("button", name="Check data").click()
    report = page.locator("#preflight")
    expect(report).to_contain_text("add the zip of the images", timeout=30_000)
    assert report.inner_text().count("image not found") == 0  # one hint, not 26 lines

    page.locator("#zip-upload input[type=file]").set_input_files(archive)
    # the uploaded file's row, by its aria-label: its text can read "pics .zip"
    expect(page.locator("#zip-upload").get_by_role("cell", name="pics.zip", exact=True)).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Check data").click()
    expect(report).to_contain_text("26 rows accepted, 0 rejected", timeout=30_000)
    expect(report).to_contain_text("blue=13, red=13")
    context.close()


def test_example_data_starts_from_the_shipped_checkpoint_that_knows_its_labels(chromium, url):
    context, page = open_tab(chromium, url)
    page.locator("#example-dataset").click()
    expect(ticked(page, "label-column")).to_have_text(["label"], timeout=60_000)
    expect(column(page, "start-from")).to_have_value("sort-of-clevr")
    expect(page.locator("#columns-note")).to_contain_text("sort-of-clevr")
    open_custom_settings(page)
    expect(page.locator("#class-weights")).to_contain_text("Class weights")
    context.close()


def test_fine_tune_tab_fits_a_phone(chromium, url, three_columns):
    context, page = open_tab(chromium, url, PHONE)
    page.locator("#csv-upload input[type=file]").set_input_files(three_columns[0])
    expect(ticked(page, "label-column")).to_have_text(["category"], timeout=30_000)
    layout = blocks_layout(page)
    assert layout["width"] <= PHONE["width"], "the page scrolls sideways"
    outside = [b["id"] for b in layout["boxes"] if b["left"] < -1 or b["right"] > PHONE["width"] + 1]
    assert not outside, f"blocks cut off at the sides: {outside}"
    assert not layout["overlaps"], f"blocks overlapping: {layout['overlaps']}"
    context.close()


def test_a_reload_mid_training_keeps_the_form_and_the_tab(chromium, url, app):
    context, page = open_tab(chromium, url)
    page.locator("#example-dataset").click()
    expect(ticked(page, "label-column")).to_have_text(["label"], timeout=60_000)
    open_custom_settings(page)
    page.get_by_label("Epochs").fill("50")
    page.locator("#checkpoint-name textarea, #checkpoint-name input").first.fill("long-run")
    page.get_by_label("Class weights").check()
    page.locator("#start-button").click()
    expect(page.locator("#job-status")).to_contain_text("running", timeout=60_000)

    page.reload()
    expect(page.locator("#start-button")).to_be_visible(timeout=30_000)  # still on the Fine-tune tab
    open_custom_settings(page)
    expect(page.get_by_label("Epochs")).to_have_value("50")
    expect(page.get_by_label("Automatic settings (recommended)")).not_to_be_checked()
    expect(page.locator("#checkpoint-name textarea, #checkpoint-name input").first).to_have_value("long-run")
    expect(page.get_by_label("Class weights")).to_be_checked()
    expect(ticked(page, "label-column")).to_have_text(["label"])
    expect(page.locator("#job-status")).to_contain_text("running")
    expect(page.locator("#job-status")).to_contain_text("elapsed")
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#job-status")).to_contain_text("stopped", timeout=120_000)
    app.jobs.wait(60)
    context.close()


def test_check_data_shows_the_plan_and_its_estimate_and_edits_turn_automatic_off(chromium, url):
    context, page = open_tab(chromium, url)
    page.locator("#example-dataset").click()
    expect(ticked(page, "label-column")).to_have_text(["label"], timeout=60_000)
    expect(page.get_by_label("Automatic settings (recommended)")).to_be_checked()
    page.get_by_label("Time budget (minutes)").fill("2")
    page.get_by_role("button", name="Check data").click()
    report = page.locator("#preflight")
    expect(report).to_contain_text("Training plan", timeout=60_000)
    expect(report).to_contain_text("estimated time on this machine")
    expect(report).to_contain_text("of the 2.0 min budget")  # the epochs fitted to the budget typed in
    assert "set by you" not in report.inner_text()  # Automatic: the recipe chose everything

    open_custom_settings(page)
    page.get_by_label("Epochs").fill("7")
    expect(page.get_by_label("Automatic settings (recommended)")).not_to_be_checked()  # the user's value wins
    page.get_by_role("button", name="Check data").click()
    expect(report).to_contain_text("epochs = 7  (set by you)", timeout=60_000)
    context.close()


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    """24 red pictures and 4 blue ones (the recipe weighs such classes), the CSV and the zip."""
    folder = tmp_path_factory.mktemp("imbalanced")
    (folder / "pics").mkdir()
    rows = []
    for i in range(28):
        colour = "blue" if i < 4 else "red"
        Image.new("RGB", (32, 32), (0, 0, 255) if i < 4 else (255, 0, 0)).save(folder / "pics" / f"{i}.png")
        rows.append([f"pics/{i}.png", "which colour is it?", colour])
    with open(folder / "imbalanced.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "question", "answer"], *rows])
    archive = shutil.make_archive(str(folder / "pics"), "zip", root_dir=folder, base_dir="pics")
    return str(folder / "imbalanced.csv"), archive


def test_changing_only_epochs_keeps_the_recipes_other_choices(chromium, url, imbalanced):
    csv_path, archive = imbalanced
    context, page = open_tab(chromium, url)
    page.locator("#csv-upload input[type=file]").set_input_files(csv_path)
    expect(ticked(page, "label-column")).to_have_text(["answer"], timeout=30_000)
    page.locator("#zip-upload input[type=file]").set_input_files(archive)
    expect(page.locator("#zip-upload").get_by_role("cell", name="pics.zip", exact=True)).to_be_visible(timeout=30_000)
    open_custom_settings(page)
    expect(page.get_by_label("Class weights")).not_to_be_checked()  # the form's box, never touched
    page.get_by_label("Epochs").fill("4")
    expect(page.get_by_label("Automatic settings (recommended)")).not_to_be_checked()
    page.get_by_role("button", name="Check data").click()
    report = page.locator("#preflight")
    expect(report).to_contain_text("epochs = 4  (set by you)", timeout=60_000)
    # the rest is still the recipe's: class weights for these classes, its learning rate and batch size
    expect(report).to_contain_text("class_weights = True  (largest / smallest")
    expect(report).to_contain_text("lr = 0.001  (a new fusion")
    assert report.inner_text().count("(set by you)") == 1
    # and the untouched fields now show the recipe's choices, the edited one the user's
    expect(page.get_by_label("Class weights")).to_be_checked()
    expect(page.get_by_label("Learning rate")).to_have_value("0.001")
    expect(page.get_by_label("Batch size")).to_have_value("64")
    expect(page.get_by_label("Epochs")).to_have_value("4")
    context.close()


def _job(app, name):
    return next((r for r in app.jobs.records() if r["checkpoint"] == name), None)


def test_an_interrupted_job_shows_resume_to_its_owner_and_resume_continues_it(chromium, url, app, tmp_path):
    from mmdemo.app.jobs import JobManager
    from mmdemo.app.worker import saved_history
    from mmdemo.training.finetune import resume_dir

    context, page = open_tab(chromium, url)
    page.locator("#example-dataset").click()
    expect(ticked(page, "label-column")).to_have_text(["label"], timeout=60_000)
    page.get_by_label("Time budget (minutes)").fill("3")
    page.locator("#checkpoint-name textarea, #checkpoint-name input").first.fill("resume-me")
    page.locator("#start-button").click()
    status = page.locator("#job-status")
    expect(status).to_contain_text("time budget 3.0 min", timeout=60_000)  # with the recipe's estimate
    expect(status).to_contain_text("estimated")
    expect(page.locator("#job-plan")).to_contain_text("estimated time on this machine")  # the plan it runs
    record = _job(app, "resume-me")
    assert record["time_limit_s"] == 180 and record["overrides"] == {}  # Automatic: the recipe's settings
    expect(page.locator("#resume-button")).to_be_hidden()

    state = resume_dir(app.registry.writable_dir / record["owner"] / "resume-me") / "state.json"
    deadline = time.monotonic() + 120
    while not state.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.is_file(), _job(app, "resume-me")["message"]
    app.jobs.close()  # the server restarts: its worker is killed, a new job manager starts on the same folder
    app.jobs = JobManager(app.registry, app.jobs.dir, app.limits)

    expect(status).to_contain_text("interrupted", timeout=30_000)
    expect(page.locator("#resume-button")).to_be_visible()
    other, other_page = open_tab(chromium, url)  # another visitor: no job, no Resume
    expect(other_page.locator("#job-status")).to_contain_text("No fine-tune job has run yet", timeout=30_000)
    expect(other_page.locator("#resume-button")).to_be_hidden()
    other.close()

    page.get_by_label("Time budget (minutes)").fill("2")
    page.locator("#resume-button").click()
    expect(status).not_to_contain_text("interrupted", timeout=30_000)
    expect(page.locator("#resume-button")).to_be_hidden()
    record = _job(app, "resume-me")
    assert record["resumed"] == 1 and record["time_limit_s"] == 120
    saved = len(saved_history(app.registry.writable_dir / record["owner"] / "resume-me"))
    deadline = time.monotonic() + 120
    while len(_job(app, "resume-me")["history"]) <= saved and time.monotonic() < deadline:
        time.sleep(0.1)  # until the resumed run completes an epoch of its own
    page.get_by_role("button", name="Stop").click()
    # on a quiet machine the resumed run may reach its last epoch before the Stop lands
    expect(status).to_contain_text(re.compile("stopped|done"), timeout=60_000)
    app.jobs.wait(record["owner"], 60)
    record = _job(app, "resume-me")
    epochs = [h["epoch"] for h in record["history"]]
    assert len(epochs) > saved and epochs == list(range(1, len(epochs) + 1))  # continued, no epoch twice
    if record["state"] == "stopped":
        expect(page.locator("#resume-button")).to_be_visible(timeout=30_000)  # stopped: it can go on again
    context.close()


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """24 pictures from 6 shops (4 each), a CSV image,question,answer,shop and the zip."""
    folder = tmp_path_factory.mktemp("grouped")
    (folder / "pics").mkdir()
    rows = []
    for i in range(24):
        colour = (255, 0, 0) if i % 2 else (0, 0, 255)
        Image.new("RGB", (32, 32), colour).save(folder / "pics" / f"{i}.png")
        rows.append([f"pics/{i}.png", "which colour is it?", "red" if i % 2 else "blue", f"shop {i // 4}"])
    with open(folder / "grouped.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "question", "answer", "shop"], *rows])
    archive = shutil.make_archive(str(folder / "pics"), "zip", root_dir=folder, base_dir="pics")
    return str(folder / "grouped.csv"), archive


def test_a_group_column_picked_on_the_page_makes_the_split_hold_out_whole_groups(chromium, url, grouped):
    csv_path, archive = grouped
    context, page = open_tab(chromium, url)
    page.locator("#csv-upload input[type=file]").set_input_files(csv_path)
    expect(ticked(page, "label-column")).to_have_text(["answer"], timeout=30_000)
    expect(column(page, "group-column")).to_have_value("(none)")
    page.locator("#zip-upload input[type=file]").set_input_files(archive)
    expect(page.locator("#zip-upload").get_by_role("cell", name="pics.zip", exact=True)).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Check data").click()
    report = page.locator("#preflight")
    expect(report).to_contain_text("whole images held out", timeout=60_000)  # no group column yet
    column(page, "group-column").click()
    page.get_by_role("option", name="shop", exact=True).click()
    expect(column(page, "group-column")).to_have_value("shop")
    page.get_by_role("button", name="Check data").click()
    expect(report).to_contain_text("groups (shop): 6", timeout=60_000)
    expect(report).to_contain_text("whole groups of the group column held out (6 groups")
    context.close()
