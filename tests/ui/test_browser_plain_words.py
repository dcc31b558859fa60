"""What a first-time visitor is told in the browser, in their own words: Stop before they have a
job says there is nothing to stop, and a question over the length limit says how long it is and
the most it may be (no environment variable, no API argument named).

Skipped where Chromium is not installed, unless MMDEMO_REQUIRE_BROWSER=1.
"""

import os

import pytest

from ..browser import CHROMIUM, DESKTOP, browser, make_app, serve

if not os.path.exists(CHROMIUM) and os.environ.get("MMDEMO_REQUIRE_BROWSER") != "1":
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    with serve(make_app(tmp_path_factory.mktemp("browser-words"))) as url, browser() as chromium:
        page = chromium.new_page(viewport=DESKTOP)
        page.goto(url)
        expect(page.locator("#predict-button")).to_be_visible(timeout=30_000)
        yield page


def test_stop_without_a_job_says_there_is_nothing_to_stop(page):
    page.get_by_role("tab", name="Fine-tune").click()
    page.get_by_role("button", name="Stop").click()
    toast = page.locator(".toast-body")
    expect(toast).to_contain_text("No fine-tune job of yours is running: there is nothing to stop.", timeout=10_000)
    expect(toast).not_to_contain_text("owner_token")
    page.get_by_role("tab", name="Predict & Explain").click()


def test_a_long_question_is_refused_with_its_length_and_the_most(page, fixture_path):
    page.locator("#image-input input[type=file]").set_input_files(fixture_path("chelsea.jpg"))
    page.locator("#text-input textarea").fill("What shape is it? " * 136)  # 2,448 characters
    page.locator("#predict-button").click()
    question = page.locator("#text-input")
    expect(question).to_contain_text("The question has 2,448 characters; the most is 2,000.", timeout=10_000)
    expect(page.locator("body")).not_to_contain_text("MMDEMO_")
