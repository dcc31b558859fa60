"""Teaching a new label in a real browser: five uploaded pictures, the text and the new label
typed, one press of Teach; the new checkpoint is selected in Predict & Explain and answers the
new label on a sixth picture; another visitor does not see it; a label the model has is refused
in words that say so.

Skipped where Chromium is not installed, unless MMDEMO_REQUIRE_BROWSER=1.
"""

import os

import pytest

from ..browser import CHROMIUM, DESKTOP, browser, make_app, serve
from ..training.test_add_classes import QUESTION, digit_pictures

if not os.path.exists(CHROMIUM) and os.environ.get("MMDEMO_REQUIRE_BROWSER") != "1":
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    app = make_app(tmp_path_factory.mktemp("browser-teach"))
    with serve(app) as url:
        yield url
    app.close()


@pytest.fixture(scope="module")
def chromium():
    with browser() as chromium:
        yield chromium


def listed(page) -> str:
    """The Predict tab's checkpoint list, as its dropdown shows it."""
    page.get_by_role("tab", name="Predict & Explain").click()
    page.locator("#checkpoint input").click()
    options = page.get_by_role("option")
    expect(options.first).to_be_visible(timeout=30_000)
    text = " ".join(options.all_inner_texts())
    page.keyboard.press("Escape")
    return text


def teach(page, pictures, label):
    page.get_by_role("tab", name="Teach").click()
    page.locator("#teach-pictures input[type=file]").set_input_files(pictures)
    expect(page.locator("#teach-pictures")).to_contain_text(
        os.path.splitext(os.path.basename(pictures[-1]))[0], timeout=30_000
    )
    page.locator("#teach-text textarea, #teach-text input").first.fill(QUESTION)
    page.locator("#teach-label textarea, #teach-label input").first.fill(label)
    page.locator("#teach-button").click()


def test_teach_a_label_from_five_pictures_and_predict_it_on_a_sixth(chromium, url, tmp_path):
    sevens = digit_pictures(tmp_path / "sevens", 7, 6)
    context = chromium.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.goto(url)
    teach(page, sevens[:5], "7")
    result = page.locator("#teach-result")
    expect(result).to_contain_text("Saved checkpoint taught", timeout=180_000)
    expect(result).to_contain_text("7 (from 5 examples)")
    expect(page.locator("#teach-example img")).to_be_visible()

    page.get_by_role("tab", name="Predict & Explain").click()
    expect(page.locator("#checkpoint input")).to_have_value("taught")  # selected there at once
    page.locator("#image-input input[type=file]").set_input_files(sevens[5])
    page.locator("#text-input textarea, #text-input input").first.fill(QUESTION)
    page.locator("#predict-button").click()
    expect(page.locator("#prediction")).to_contain_text("7", timeout=60_000)
    expect(page.locator("#prediction h2, #prediction .output-class").first).to_have_text("7", timeout=30_000)

    other = chromium.new_context(viewport=DESKTOP)  # another visitor
    other_page = other.new_page()
    other_page.goto(url)
    expect(other_page.locator("#checkpoint input")).to_have_value("sort-of-clevr", timeout=30_000)
    assert "taught" not in listed(other_page)
    assert "taught" in listed(page)

    # a label the model already answers: refused, and it says so
    teach(other_page, sevens[:2], "circle")
    expect(other_page.get_by_text("already answers, so nothing was taught")).to_be_visible(timeout=60_000)
    other.close()
    context.close()
