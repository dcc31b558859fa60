"""The Evaluate tab on a checkpoint of several tasks, in a real browser (headless Chromium +
Playwright): the task selector appears, choosing a task switches the confusion matrix, the
filters and the rows to that task's, and a checkpoint of one task shows no selector.

Skipped where Chromium is not installed, unless MMDEMO_REQUIRE_BROWSER=1.
"""

import os
import shutil

import pytest
import torch

from ..browser import CHROMIUM, DESKTOP, browser, serve
from ..evaluation.test_tasks import PLACES, save_two_task_checkpoint, write_two_task_set

if not os.path.exists(CHROMIUM) and os.environ.get("MMDEMO_REQUIRE_BROWSER") != "1":
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect
expect.set_options(timeout=30_000)  # a shared 2-core machine under load is slow to redraw

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A server with a checkpoint of two tasks (colour, place) and one of one task, and a CSV with
    both label columns (each with one empty cell) plus a zip of its images."""
    from mmdemo import ui
    from mmdemo.app.registry import CheckpointRegistry
    from mmdemo.model.checkpoint import save_checkpoint
    from mmdemo.model.classifier import build_model

    from ..conftest import tiny_config

    root = tmp_path_factory.mktemp("evaluate-tasks")
    save_two_task_checkpoint(root / "shipped" / "two-tasks")
    torch.manual_seed(0)
    save_checkpoint(build_model(tiny_config()), root / "shipped" / "one-task")
    csv_path = write_two_task_set(root / "set")
    archive = shutil.make_archive(str(root / "images"), "zip", root_dir=root / "set", base_dir="img")
    app = ui.App(CheckpointRegistry(root / "mine", root / "shipped"), work_dir=str(root / "work"))
    with serve(app) as url:
        yield {"url": url, "csv": str(csv_path), "zip": archive}


@pytest.fixture(scope="module")
def page(site):
    with browser() as chromium:
        page = chromium.new_context(viewport=DESKTOP).new_page()
        page.set_default_timeout(60_000)
        page.goto(site["url"])
        page.get_by_role("tab", name="Evaluate").click()
        yield page


def _pick(page, elem_id: str, option: str):
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def _headers(page) -> list[str]:
    return page.locator("#eval-confusion th[role=columnheader]").evaluate_all("hs => hs.map(h => h.innerText.trim())")


def _first_column(page, elem_id: str) -> set[str]:
    return set(
        page.locator(f"#{elem_id} .virtual-row").evaluate_all(
            "rows => rows.map(r => r.querySelector('[role=gridcell]').innerText.trim())"
        )
    )


def _evaluate_upload(page, site, checkpoint: str):
    _pick(page, "eval-checkpoint", checkpoint)
    page.get_by_label("My labelled CSV").check()
    page.locator("#eval-csv input[type=file]").set_input_files(site["csv"])
    page.locator("#eval-zip input[type=file]").set_input_files(site["zip"])
    expect(page.locator("#eval-zip").get_by_role("cell", name="images.zip", exact=True)).to_be_visible(timeout=60_000)
    page.locator("#eval-run").click()
    expect(page.locator("#eval-status")).to_contain_text("done", timeout=300_000)


def test_choosing_a_task_switches_the_confusion_matrix_and_the_rows(page, site):
    _evaluate_upload(page, site, "two-tasks")
    tasks = page.locator("#eval-task")
    expect(tasks).to_be_visible()
    expect(tasks.get_by_label("colour")).to_be_checked()
    expect(page.locator("#eval-summary")).to_contain_text("Task colour")
    expect(page.locator("#eval-count")).to_contain_text("11 of 11 rows match")  # row 3 has no colour
    assert _headers(page) == ["true \\ predicted", "blue", "red"]
    assert _first_column(page, "eval-confusion") == {"blue", "red"}

    tasks.get_by_label("place").check()
    expect(page.locator("#eval-summary")).to_contain_text("Task place")
    expect(page.locator("#eval-confusion th[role=columnheader]").nth(1)).to_have_attribute("title", "left")
    assert _headers(page) == ["true \\ predicted", *PLACES] and _first_column(page, "eval-confusion") == set(PLACES)
    expect(page.locator("#eval-count")).to_contain_text("11 of 11 rows match")  # row 6 has no place
    # the filters offer the place task's labels, and the rows hold its labels
    page.locator("#eval-true input").click()
    expect(page.get_by_role("option", name="middle", exact=True)).to_be_visible()
    page.get_by_role("option", name="middle", exact=True).click()
    expect(page.locator("#eval-count")).to_contain_text("3 of 11 rows match")
    label = page.locator("#eval-rows [data-testid=cell-0-4]")
    expect(label).to_have_text("middle")

    tasks.get_by_label("colour").check()
    expect(page.locator("#eval-summary")).to_contain_text("Task colour")
    expect(page.locator("#eval-confusion th[role=columnheader]").nth(1)).to_have_attribute("title", "blue")
    expect(page.locator("#eval-true input")).to_have_value("(all)")


def test_a_checkpoint_of_one_task_shows_no_task_selector(page, site):
    page.get_by_label("Built-in Sort-of-CLEVR benchmark").check()
    page.locator("#eval-scenes input").fill("1")
    _pick(page, "eval-checkpoint", "one-task")
    page.locator("#eval-run").click()
    expect(page.locator("#eval-status")).to_contain_text("with one-task", timeout=300_000)
    expect(page.locator("#eval-task")).to_be_hidden()
    expect(page.locator("#eval-summary")).not_to_contain_text("Task")
