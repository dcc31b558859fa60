"""The data audit in a real browser: an upload with a few wrong labels shows them in the review
list after 'Audit data'; excluding one and training on the reviewed data gives a checkpoint
whose training record and model card list the exclusion; another visitor sees no audit.

Skipped where Chromium is not installed, unless MMDEMO_REQUIRE_BROWSER=1.
"""

import json
import os
import re
import shutil

import pytest

from ..audit.scans import write_scans, wrong_rows
from ..browser import CHROMIUM, DESKTOP, browser, make_app, serve

if not os.path.exists(CHROMIUM) and os.environ.get("MMDEMO_REQUIRE_BROWSER") != "1":
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect

WRONG = (4, 11, 26)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    app = make_app(tmp_path_factory.mktemp("browser-audit"))
    yield app
    app.close()


@pytest.fixture(scope="module")
def url(app):
    with serve(app) as url:
        yield url


@pytest.fixture(scope="module")
def chromium():
    with browser() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scans")
    csv_path = write_scans(folder, n=40, wrong=WRONG)
    archive = shutil.make_archive(str(folder / "images"), "zip", root_dir=folder, base_dir="img")
    return csv_path, archive


def open_tab(chromium, url):
    context = chromium.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.goto(url)
    page.get_by_role("tab", name="Fine-tune").click()
    expect(page.locator("#audit-button")).to_be_visible(timeout=30_000)
    return context, page


def test_audit_review_exclude_and_train_on_the_reviewed_data(chromium, url, app, scans):
    csv_path, archive = scans
    context, page = open_tab(chromium, url)
    page.locator("#csv-upload input[type=file]").set_input_files(str(csv_path))
    expect(page.locator("#label-column label.selected")).to_have_text(["label"], timeout=30_000)
    page.locator("#zip-upload input[type=file]").set_input_files(archive)
    expect(page.locator("#zip-upload").get_by_role("cell", name="images.zip", exact=True)).to_be_visible(timeout=30_000)
    page.locator("#start-from input").fill("sort-of-clevr")  # its small encoders: a quick audit
    page.locator("#start-from input").press("Enter")
    page.locator("#audit-button").click()
    summary = page.locator("#audit-summary")
    expect(summary).to_contain_text("3 rows whose label looks wrong", timeout=180_000)
    expect(page.locator("#job-status")).to_contain_text("audit done")

    # the wrong rows are the review list's first entries, each with its picture and suggestion
    wrong = sorted(wrong_rows(csv_path, WRONG))
    gallery = page.locator("#audit-gallery")
    captions = gallery.locator(".caption-label")
    expect(captions.first).to_be_visible()
    shown = " | ".join(captions.all_inner_texts())
    for row in wrong:
        assert re.search(rf"row {row}: label looks wrong: (bright|dark) -> (bright|dark)\?", shown), shown
    first = int(re.match(r"row (\d+)", captions.first.inner_text()).group(1))
    assert first in wrong

    gallery.locator("button.thumbnail-item").first.click()
    selected = page.locator("#audit-selected")
    expect(selected).to_contain_text(f"Row {first} of your CSV")
    expect(selected).to_contain_text("suggested label")
    expect(page.locator("#audit-picture img")).to_be_visible()
    page.locator("#audit-exclude").click()
    expect(selected).to_contain_text("your decision: excluded")
    decisions = page.locator("#audit-decisions")
    expect(decisions).to_contain_text("excluded")
    line = decisions.get_by_role("row").filter(has=page.get_by_role("gridcell", name=str(first), exact=True))
    expect(line.get_by_role("gridcell", name="excluded", exact=True)).to_be_visible()

    # a reload keeps the decision (it is kept on the server with the visitor's audit)
    page.reload()
    page.get_by_role("tab", name="Fine-tune").click()
    expect(page.locator("#audit-decisions")).to_contain_text("excluded", timeout=30_000)

    other, other_page = open_tab(chromium, url)  # another visitor: no audit, no findings
    expect(other_page.locator("#job-status")).to_contain_text("No fine-tune job has run yet", timeout=30_000)
    expect(other_page.locator("#audit-summary")).not_to_contain_text("whose label looks wrong")
    other.close()

    page.get_by_text("Custom settings (used when Automatic is off)").click()
    page.get_by_label("Epochs").fill("1")
    page.locator("#checkpoint-name textarea, #checkpoint-name input").first.fill("reviewed")
    page.locator("#train-reviewed").click()
    status = page.locator("#job-status")
    expect(status).to_contain_text("saved checkpoint 'reviewed'", timeout=300_000)

    # this page's audit: the newest (the job records of the other tests' apps share the data folder)
    owner = max((r for r in app.jobs.records() if r.get("kind") == "audit"), key=lambda r: r["created"])["owner"]
    saved = sorted(
        str(p.parent.relative_to(app.registry.writable_dir)) for p in app.registry.writable_dir.rglob("config.json")
    )
    jobs = [(r.get("kind"), r["owner"], r["state"], r.get("message")) for r in app.jobs.records()]
    assert "reviewed" in app.registry.names(owner), f"saved: {saved}; jobs: {jobs}"
    config = json.loads((app.registry.path("reviewed", owner) / "config.json").read_text())
    assert [e["row"] for e in config["training"]["review"]["excluded"]] == [first]
    assert f"1 row excluded (row {first})" in config["training"]["data"]
    context.close()
