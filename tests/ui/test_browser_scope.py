"""In a real browser: the out-of-scope banner appears for an out-of-scope question and not for
an in-scope one, and the model card opens. A tiny checkpoint with fitted scope statistics
stands in for the shipped one (same pattern as test_browser.py)."""

import os
import shutil
from pathlib import Path

import pytest

if not os.path.exists("/usr/bin/chromium") and os.environ.get("MMDEMO_REQUIRE_BROWSER") != "1":
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")

import torch  # noqa: E402

from mmdemo import ui  # noqa: E402
from mmdemo.app.registry import CheckpointRegistry  # noqa: E402
from mmdemo.datasets.csv_table import read_csv  # noqa: E402
from mmdemo.model.checkpoint import save_checkpoint  # noqa: E402
from mmdemo.model.classifier import build_model  # noqa: E402
from mmdemo.training.scope_fit import fit_scope, save_scope  # noqa: E402

from ..browser import browser, serve  # noqa: E402
from ..conftest import tiny_config, write_colour_scenes  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-scope")
    torch.manual_seed(0)
    model = build_model(tiny_config())
    path = save_checkpoint(model, root / "shipped" / "sort-of-clevr")
    examples = read_csv(write_colour_scenes(root / "data")).examples
    stats = fit_scope(model, examples[:64], examples[64:])[0]
    save_scope(path, stats)
    # the same model, with a floor on image reliance that no answer reaches: every answer
    # "ignores the image" (scope.assess's third check; its maths is tested in test_scope.py)
    blind = save_checkpoint(model, root / "shipped" / "blind")
    stats.reliance_floor = 1.01
    save_scope(blind, stats)
    app = ui.App(CheckpointRegistry(root / "mine", root / "shipped"), work_dir=str(root / "work"))
    with serve(app) as url, browser() as chromium:
        page = chromium.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        yield page, root / "data" / "img" / "3.png"


def _ask(page, image: Path, question: str) -> None:
    page.locator("#image-input input[type=file]").set_input_files(str(image))
    page.locator("#text-input textarea").fill(question)
    page.locator("#predict-button").click()


def test_banner_for_out_of_scope_input_only(served):
    page, image = served
    _ask(page, image, "is the purple square on the left?")
    banner = page.locator("#scope-banner")
    # the unknown word is named, as a colour, with the colours the model knows
    known = "purple is not a colour this model knows (it knows red, green, blue, gray)"
    playwright.expect(banner).to_contain_text(known, timeout=60_000)
    playwright.expect(page.locator("#prediction")).to_contain_text("no confident answer")
    # the details line leads with the abstention, the answer only as a best guess
    details = page.locator("#timing")
    playwright.expect(details.locator("strong").first).to_have_text(f"Not sure: {known}")
    playwright.expect(details).to_contain_text("its best guess would be")

    _ask(page, image, "is the gray square on the left?")
    playwright.expect(page.locator("#prediction")).to_contain_text("%", timeout=60_000)
    playwright.expect(page.locator("#prediction")).not_to_contain_text("first use", timeout=60_000)  # loaded
    playwright.expect(banner).not_to_contain_text("Out of scope")
    playwright.expect(details).not_to_contain_text("Not sure")


def test_banner_when_the_answer_ignores_the_image(served):
    page, image = served
    page.locator("#checkpoint input").click()
    page.get_by_role("option", name="blind").click()
    _ask(page, image, "is the gray square on the left?")
    banner = page.locator("#scope-banner")
    playwright.expect(banner).to_contain_text("the answer ignores the image", timeout=60_000)
    playwright.expect(banner).not_to_contain_text("unlike the training questions")
    playwright.expect(page.locator("#prediction")).to_contain_text("no confident answer")
    page.locator("#checkpoint input").click()
    page.get_by_role("option", name="sort-of-clevr").click()
    _ask(page, image, "is the gray square on the left?")
    playwright.expect(banner).not_to_contain_text("Out of scope", timeout=60_000)


def test_an_evaluated_row_the_model_abstains_on_leads_with_not_sure(served, tmp_path):
    page, image = served
    data = image.parent.parent  # data.csv and img/
    archive = shutil.make_archive(str(tmp_path / "img"), "zip", root_dir=data, base_dir="img")
    page.get_by_role("tab", name="Evaluate").click()
    page.locator("#eval-checkpoint input").click()
    page.get_by_role("option", name="blind", exact=True).click()  # every answer ignores the image
    page.get_by_label("My labelled CSV").check()
    page.locator("#eval-csv input[type=file]").set_input_files(str(data / "data.csv"))
    page.locator("#eval-zip input[type=file]").set_input_files(archive)
    playwright.expect(page.locator("#eval-zip").get_by_role("cell", name="img.zip", exact=True)).to_be_visible(
        timeout=60_000
    )
    page.locator("#eval-run").click()
    playwright.expect(page.locator("#eval-status")).to_contain_text("done", timeout=120_000)
    page.locator("#eval-rows [data-testid=cell-0-3]").click()
    detail = page.locator("#eval-detail")
    playwright.expect(detail.locator("strong").nth(2)).to_have_text("Not sure: out of scope", timeout=30_000)
    playwright.expect(detail).to_contain_text("its best guess would be")
    page.get_by_role("tab", name="Predict & Explain").click()


def test_what_if_leads_with_not_sure_where_the_model_abstains(served):
    page, image = served
    page.get_by_role("tab", name="Compare & What-if").click()
    page.locator("#wi-image input[type=file]").set_input_files(str(image))
    page.locator("#wi-text textarea").fill("is the gray square on the left?")
    page.locator("#wi-edit-text textarea").fill("is the red square on the left?")
    page.locator("#wi-checkpoint input").click()
    page.get_by_role("option", name="blind", exact=True).click()  # every answer ignores the image
    page.locator("#wi-run").click()
    summary = page.locator("#wi-summary")
    playwright.expect(summary).to_contain_text("Before: Not sure: the answer ignores the image —", timeout=60_000)
    playwright.expect(summary).to_contain_text("after: Not sure: the answer ignores the image — its best guess")
    page.get_by_role("tab", name="Predict & Explain").click()


def test_model_card_opens(served):
    page, _ = served
    page.get_by_text("Model card").click()
    card = page.locator("#model-card")
    playwright.expect(card).to_contain_text("Answers (3)", timeout=10_000)
    playwright.expect(card).to_contain_text("blue, gray, green, red")


def test_deletion_curve_on_demand(served):
    page, image = served
    _ask(page, image, "is the red square on the left?")
    playwright.expect(page.locator("#prediction")).to_contain_text("%", timeout=60_000)
    playwright.expect(page.locator("#prediction")).not_to_contain_text("first use", timeout=60_000)  # loaded
    page.locator("#deletion-button").click()
    playwright.expect(page.locator("#deletion-summary")).to_contain_text("Deletion area", timeout=60_000)
    playwright.expect(page.locator("#deletion-plot .js-plotly-plot")).to_be_visible(timeout=30_000)
