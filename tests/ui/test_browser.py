"""A real browser (Debian's headless Chromium driven by Playwright) uses the app: predict on an
uploaded image, then fine-tune one epoch on the example dataset.

Skipped where Chromium is not installed, unless MMDEMO_REQUIRE_BROWSER=1 (as .ci/run sets it).
Screenshots go to artifacts/ (not committed).
"""

import os
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"

if not os.path.exists("/usr/bin/chromium") and os.environ.get("MMDEMO_REQUIRE_BROWSER") != "1":
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")

from mmdemo import ui  # noqa: E402
from mmdemo.app.registry import CheckpointRegistry  # noqa: E402
from mmdemo.datasets.sortofclevr import LABELS, write_examples  # noqa: E402
from mmdemo.model.checkpoint import save_checkpoint  # noqa: E402
from mmdemo.model.classifier import build_model  # noqa: E402

from ..browser import browser, serve  # noqa: E402
from ..conftest import tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    path = save_checkpoint(build_model(tiny_config(labels=LABELS)), root / "shipped" / "sort-of-clevr")
    write_examples(path / "examples")
    app = ui.App(CheckpointRegistry(root / "mine", root / "shipped"), work_dir=str(root / "work"))
    with serve(app) as local_url:
        yield local_url


@pytest.fixture(scope="module")
def page(url):
    with browser() as chromium:
        page = chromium.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        yield page


def test_predict_in_the_browser(page, fixture_path):
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#image-input input[type=file]").set_input_files(fixture_path("chelsea.jpg"))
    page.locator("#text-input textarea").fill("What shape is the cat?")
    page.locator("#predict-button").click()
    label = page.locator("#prediction")
    # the answer's details first: while the checkpoint loads, the answer's place shows a progress bar
    playwright.expect(page.locator("#timing")).to_contain_text("ms on cpu", timeout=60_000)
    assert any(line.strip() in LABELS for line in label.inner_text().splitlines())  # the answer, on its own line
    playwright.expect(page.locator("#overlay img")).to_be_visible(timeout=30_000)
    playwright.expect(page.locator("#timing")).to_contain_text("ms on cpu")
    page.screenshot(path=str(ARTIFACTS / "browser-predict.png"), full_page=True)


def test_fine_tune_in_the_browser(page):
    page.get_by_role("tab", name="Fine-tune").click()
    page.locator("#example-dataset").click()
    playwright.expect(page.locator("#csv-upload")).to_contain_text("sort-of-clevr", timeout=60_000)
    # the example data's labels are the shipped model's: it starts from it (much faster than a new model)
    playwright.expect(page.locator("#start-from input")).to_have_value("sort-of-clevr", timeout=30_000)
    page.get_by_text("Custom settings (used when Automatic is off)").click()  # one epoch: a short test
    epochs = page.get_by_label("Epochs")
    epochs.fill("1")
    page.locator("#checkpoint-name textarea, #checkpoint-name input").first.fill("browser-tuned")
    page.locator("#start-button").click()
    status = page.locator("#job-status")
    playwright.expect(status).to_contain_text("done", timeout=300_000)
    playwright.expect(status).to_contain_text("browser-tuned")
    playwright.expect(page.locator("#curves .js-plotly-plot")).to_be_visible(timeout=30_000)
    # the fitted temperature's effect: the reliability diagram of the validation rows
    playwright.expect(page.locator("#reliability .js-plotly-plot")).to_be_visible(timeout=30_000)
    playwright.expect(page.locator("#reliability")).to_contain_text("ECE")
    playwright.expect(page.locator("#download-name input")).to_have_value("browser-tuned", timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "browser-finetune.png"), full_page=True)
    page.get_by_role("tab", name="Predict & Explain").click()
    page.locator("#checkpoint input").click()
    playwright.expect(page.get_by_role("option", name="browser-tuned")).to_be_visible(timeout=10_000)
