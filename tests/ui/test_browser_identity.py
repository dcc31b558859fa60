"""The owner token in a real browser, on the server started as a Space starts it
(``python app.py``, tests/space.py): the page gets its token at load, keeps it across a reload
(its checkpoints and ratings stay its own), and another browser sees none of them.

Skipped where Chromium is not installed, unless MMDEMO_REQUIRE_BROWSER=1."""

import os

import pytest
import torch

from mmdemo.datasets.sortofclevr import LABELS
from mmdemo.evaluation.ratings import RatingStore
from mmdemo.model.checkpoint import save_checkpoint
from mmdemo.model.classifier import build_model

from ..browser import CHROMIUM, DESKTOP, browser
from ..conftest import tiny_config
from ..space import Space

if not os.path.exists(CHROMIUM) and os.environ.get("MMDEMO_REQUIRE_BROWSER") != "1":
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect


def _evaluate_and_rate(page) -> None:
    page.get_by_role("tab", name="Evaluate").click()
    page.locator("#eval-scenes input").fill("1")
    page.locator("#eval-run").click()
    expect(page.locator("#eval-status")).to_contain_text("done", timeout=300_000)
    page.locator("#eval-rows [data-testid=cell-0-3]").click()
    expect(page.locator("#eval-overlay img")).to_be_visible(timeout=30_000)
    page.get_by_label("partly", exact=True).check()
    page.locator("#eval-save-rating").click()
    expect(page.locator("#eval-rating-status")).to_contain_text("Saved rating", timeout=60_000)


def _listed(page) -> str:
    """The Predict tab's checkpoint list after 'Refresh list'."""
    page.get_by_role("tab", name="Predict & Explain").click()
    page.get_by_role("button", name="Refresh list").click()
    page.locator("#checkpoint input").click()
    options = page.get_by_role("option")
    expect(options.first).to_be_visible(timeout=30_000)
    text = " ".join(options.all_inner_texts())
    page.keyboard.press("Escape")
    return text


def test_a_reload_keeps_the_token_and_the_visitors_checkpoints(tmp_path):
    with Space(tmp_path) as space, browser() as chromium:
        context = chromium.new_context(viewport=DESKTOP)
        page = context.new_page()
        page.goto(space.url)
        _evaluate_and_rate(page)  # the rating names the page's owner, made from its token
        (rating,) = RatingStore(space.data_dir).all()
        owner = rating["rater"]
        assert owner.startswith("a-")
        torch.manual_seed(5)
        folder = space.data_dir / "checkpoints" / owner / "kept-model"
        save_checkpoint(build_model(tiny_config(labels=LABELS)), folder)

        page.reload()
        expect(page.get_by_role("tab", name="Evaluate")).to_be_visible(timeout=60_000)
        assert "kept-model" in _listed(page)  # the same token after the reload: the same owner
        page.get_by_role("tab", name="Evaluate").click()
        expect(page.locator("#eval-ratings-summary")).to_contain_text("sort-of-clevr", timeout=30_000)

        stranger = chromium.new_context(viewport=DESKTOP).new_page()
        stranger.goto(space.url)
        expect(stranger.get_by_role("tab", name="Evaluate")).to_be_visible(timeout=60_000)
        assert "kept-model" not in _listed(stranger) and "sort-of-clevr" in _listed(stranger)
        stranger.get_by_role("tab", name="Evaluate").click()
        expect(stranger.locator("#eval-ratings-note")).to_contain_text("Your own ratings")
        expect(stranger.locator("#eval-ratings-summary")).not_to_contain_text("sort-of-clevr")
        context.close()
