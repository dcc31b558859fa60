"""In a real browser: refusals are shown as text naming what was refused (a user string in an
error is never rendered as HTML), and the shipped checkpoint cannot be replaced from the page."""

import pytest

from ..browser import browser
from .test_browser import playwright, url  # noqa: F401  (url: a live app, as test_browser serves it)


@pytest.fixture(scope="module")
def visitor(url):  # noqa: F811
    with browser() as chromium:
        page = chromium.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        yield page


def _start_with_name(page, name, overwrite=False):
    page.get_by_role("tab", name="Fine-tune").click()
    page.locator("#checkpoint-name textarea, #checkpoint-name input").first.fill(name)
    box = page.get_by_label("Overwrite if it exists")
    if box.is_checked() != overwrite:
        box.click()
    page.locator("#start-button").click()


def test_shipped_checkpoint_refusal_is_shown_in_the_page(visitor):
    _start_with_name(visitor, "sort-of-clevr", overwrite=True)
    refusal = visitor.get_by_text("'sort-of-clevr' is a shipped checkpoint and cannot be overwritten")
    playwright.expect(refusal.first).to_be_visible(timeout=30_000)


def test_a_user_string_in_an_error_is_shown_as_text_not_html(visitor):
    _start_with_name(visitor, "<b id=injected>x</b>")
    playwright.expect(visitor.get_by_text("'<b id=injected>x</b>' is not valid").first).to_be_visible(timeout=30_000)
    assert visitor.locator("#injected").count() == 0
