"""Refresh the README's screenshots: run the app on the shipped checkpoint in headless Chromium.

.venv/bin/python docs/make_screenshots.py   (needs Debian's chromium and the playwright package)
"""

import socket
import sys
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tempfile  # noqa: E402

from mmdemo.app.registry import CheckpointRegistry  # noqa: E402
from mmdemo.ui import App, create_demo  # noqa: E402


def main() -> None:
    app = App(CheckpointRegistry(tempfile.mkdtemp(prefix="mmdemo-screens-")))  # fine-tuned ones go to a temp dir
    demo = create_demo(app)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True)
    examples = app.examples()
    app.registry.predictor(app.default_checkpoint()).predict(*examples[0])  # warm up: the figure shown is a warm one
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.goto(demo.local_url)
        # a relational example: the answer in view, the referenced and the answer object marked
        page.locator("#examples").get_by_text(examples[3][1]).click()
        expect(page.locator("#prediction")).to_contain_text("%", timeout=60_000)
        expect(page.locator("#word-maps img")).to_be_visible(timeout=30_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ROOT / "docs" / "predict.png"), full_page=False)
        # click a word: its own map, the word marked, its tile framed
        page.locator("#words").get_by_text("orange", exact=True).click()
        expect(page.locator("#overlay")).to_contain_text("“orange”", timeout=10_000)
        page.locator("#overlay").scroll_into_view_if_needed()
        page.wait_for_timeout(1000)
        page.screenshot(path=str(ROOT / "docs" / "predict-word.png"), full_page=False)
        phone = browser.new_page(viewport={"width": 390, "height": 844})
        phone.goto(demo.local_url)
        phone.locator("#examples").get_by_text(examples[3][1]).click()
        expect(phone.locator("#prediction")).to_contain_text("%", timeout=60_000)
        phone.wait_for_timeout(1500)
        phone.screenshot(path=str(ROOT / "docs" / "predict-phone.png"), full_page=False)
        page.get_by_role("tab", name="Fine-tune").click()
        page.locator("#example-dataset").click()
        expect(page.locator("#start-from input")).to_have_value("sort-of-clevr", timeout=60_000)
        # Automatic settings (the recipe) with a one-minute budget: the plan, its estimate and the
        # reliability chart are in the picture
        page.locator("#time-budget input").fill("1")
        page.get_by_role("button", name="Check data").click()
        expect(page.locator("#preflight")).to_contain_text("rows accepted", timeout=60_000)
        page.locator("#checkpoint-name textarea, #checkpoint-name input").first.fill("screenshot-tuned")
        page.get_by_label("Overwrite if it exists").check()
        page.locator("#start-button").click()
        expect(page.locator("#job-status")).to_contain_text("done", timeout=900_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ROOT / "docs" / "finetune.png"), full_page=True)
        browser.close()
    demo.close()


if __name__ == "__main__":
    main()
