"""The similar training examples in a real browser: a visitor clicks an example, the answer
comes, and under it the most similar training rows of the (indexed) checkpoint, each with its
picture, text, label and similarity.

Skipped where Chromium is not installed, unless MMDEMO_REQUIRE_BROWSER=1.
"""

import os

import pytest

from mmdemo import ui
from mmdemo.app.registry import CheckpointRegistry
from mmdemo.datasets.sortofclevr import write_examples

from ..browser import CHROMIUM, DESKTOP, browser, serve
from ..similar_rows import indexed_checkpoint

if not os.path.exists(CHROMIUM) and os.environ.get("MMDEMO_REQUIRE_BROWSER") != "1":
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect
pytestmark = pytest.mark.slow  # a server and a browser


def test_an_answer_shows_the_most_similar_training_examples_under_it(tmp_path):
    checkpoint, _ = indexed_checkpoint(tmp_path / "shipped", "sort-of-clevr")
    write_examples(checkpoint / "examples")
    app = ui.App(CheckpointRegistry(tmp_path / "mine", tmp_path / "shipped"), work_dir=str(tmp_path / "work"))
    with serve(app) as url, browser() as chromium:
        page = chromium.new_context(viewport=DESKTOP).new_page()
        page.goto(url)
        expect(page.locator("#predict-button")).to_be_visible(timeout=30_000)
        expect(page.locator("#similar-examples .similar-row")).to_have_count(0)
        page.locator("#examples").get_by_text("What shape is the red object?").click()
        expect(page.locator("#prediction")).to_contain_text("%", timeout=60_000)
        rows = page.locator("#similar-examples .similar-row")
        expect(rows).to_have_count(5, timeout=30_000)
        expect(page.locator("#similar-examples")).to_contain_text("Most similar training examples")
        expect(page.locator("#similar-examples")).to_contain_text("cosine similarity")
        assert rows.first.locator("img").get_attribute("src").startswith("data:image/png;base64,")
        assert rows.first.locator("img").evaluate("img => img.naturalWidth") > 0  # a picture that decodes
        assert page.locator("#similar-examples").bounding_box()["y"] > page.locator("#prediction").bounding_box()["y"]
