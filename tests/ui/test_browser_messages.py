"""What a visitor's own text looks like in the Fine-tune tab of the server started as a Space
starts it (``python app.py``): a CSV header written as HTML, and an image path that holds a code
fence, are shown as the text they are; no element of theirs reaches the page.

Skipped where Chromium is not installed, unless MMDEMO_REQUIRE_BROWSER=1.
"""

import csv
import os

import pytest

from ..browser import CHROMIUM, DESKTOP, browser
from ..space import Space

if not os.path.exists(CHROMIUM) and os.environ.get("MMDEMO_REQUIRE_BROWSER") != "1":
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect

HEADER = "x`<img src=x onerror=alert(1)>"
FENCED_PATH = "a\n```\n<img src=y onerror=alert(2)>.png"  # a line of its own that could close a fence


def test_a_csv_header_and_paths_show_as_text(tmp_path):
    with open(tmp_path / "data.csv", "w", newline="") as f:
        rows = [[f"img/{i}.png", "which colour is it?", "red" if i % 2 else "blue"] for i in range(6)]
        csv.writer(f).writerows([[HEADER, "text", "label"], [FENCED_PATH, "what?", "red"], *rows])
    with Space(tmp_path / "space") as space, browser() as chromium:
        context = chromium.new_context(viewport=DESKTOP)
        page = context.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.goto(space.url)
        page.get_by_role("tab", name="Fine-tune").click()
        page.locator("#csv-upload input[type=file]").set_input_files(str(tmp_path / "data.csv"))
        note = page.locator("#columns-note")
        expect(note).to_contain_text(f"image: '{HEADER}'", timeout=30_000)
        assert note.locator("img").count() == 0

        page.get_by_role("button", name="Check data").click()
        report = page.locator("#preflight")
        # no zip: the hint names the rows whose images are missing, the fenced path first
        expect(report).to_contain_text("add the zip of the images", timeout=30_000)
        expect(report).to_contain_text("<img src=y onerror=alert(2)>")  # inside the one code block
        assert report.locator("img").count() == 0 and report.locator("pre").count() == 1
        assert dialogs == []
        context.close()
