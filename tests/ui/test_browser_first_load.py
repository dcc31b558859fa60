"""A checkpoint's first use loads it from disk, which takes seconds with real weights: the
answer's place in Predict & Explain (and Compare's results) says so ("loading checkpoint 'x'
(first use)") until the answer comes, and a checkpoint already loaded answers without it. The load here waits for the
test to let it go, so the message is seen every time, whatever the machine's speed.

Skipped where Chromium is not installed, unless MMDEMO_REQUIRE_BROWSER=1.
"""

import os
import threading

import pytest

from mmdemo import ui
from mmdemo.app.registry import CheckpointRegistry

from ..browser import CHROMIUM, DESKTOP, browser, make_app, serve

if not os.path.exists(CHROMIUM) and os.environ.get("MMDEMO_REQUIRE_BROWSER") != "1":
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect


class HeldLoads(CheckpointRegistry):
    """The registry, whose loads from disk wait until ``release`` is set."""

    release = threading.Event()

    def predictor(self, name, owner=None):
        if not self.is_loaded(name, owner):
            assert self.release.wait(60)
        return super().predictor(name, owner)


def test_a_checkpoints_first_use_says_it_is_loading(tmp_path, fixture_path):
    shipped = make_app(tmp_path).registry
    app = ui.App(HeldLoads(shipped.writable_dir, shipped.shipped_dir), work_dir=str(tmp_path / "work"))
    with serve(app) as url, browser() as chromium:
        page = chromium.new_page(viewport=DESKTOP)
        page.goto(url)
        page.locator("#image-input input[type=file]").set_input_files(fixture_path("chelsea.jpg"))
        page.locator("#text-input textarea").fill("What shape is the red object?")
        page.locator("#predict-button").click()
        answer = page.locator("#prediction")
        expect(answer).to_contain_text("loading checkpoint 'sort-of-clevr' (first use)", timeout=30_000)
        HeldLoads.release.set()
        expect(page.locator("#timing")).to_contain_text("from sort-of-clevr", timeout=60_000)
        page.locator("#text-input textarea").fill("What shape is the blue object?")
        page.locator("#predict-button").click()
        expect(page.locator("#words")).to_contain_text("blue", timeout=60_000)
        expect(answer).not_to_contain_text("first use")


def test_compare_says_which_checkpoints_it_is_loading(tmp_path, fixture_path):
    shipped = make_app(tmp_path, other=["alpha", "beta"]).registry
    registry = HeldLoads(shipped.writable_dir, shipped.shipped_dir)
    registry.release = threading.Event()
    app = ui.App(registry, work_dir=str(tmp_path / "work"))
    with serve(app) as url, browser() as chromium:
        page = chromium.new_page(viewport=DESKTOP)
        page.goto(url)
        page.get_by_role("tab", name="Compare & What-if").click()
        page.locator("#cmp-image input[type=file]").set_input_files(fixture_path("chelsea.jpg"))
        page.locator("#cmp-text textarea").fill("What shape is the red object?")
        page.locator("#cmp-checkpoint-b input").click()
        page.get_by_role("option", name="other", exact=True).click()
        page.locator("#cmp-run").click()
        loading = "loading checkpoint 'sort-of-clevr', 'other' (first use)"
        expect(page.locator("#cmp-summary")).to_contain_text(loading, timeout=30_000)
        registry.release.set()
        expect(page.locator("#cmp-summary")).to_contain_text("other (", timeout=60_000)
        expect(page.locator("#cmp-summary")).not_to_contain_text("first use")
