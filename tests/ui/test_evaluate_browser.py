"""The Evaluate and Compare & What-if tabs in a real browser (headless Chromium + Playwright):
filters and confusion cells list exactly their rows, a row opens in Predict & Explain, ratings
survive a restart and two raters at once, the report downloads and opens offline, two
checkpoints show different heatmaps, a counterfactual edit changes the answer, and Stop ends a
run that the test holds at a gate (no race between a click and a real run).

Tiny offline checkpoints serve most tests; the counterfactual colour swap uses the shipped one.
Skipped where Chromium is not installed, unless MMDEMO_REQUIRE_BROWSER=1.
"""

import csv
import io
import json
import os
import re
import shutil
import threading
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM) and os.environ.get("MMDEMO_REQUIRE_BROWSER") != "1":
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect
expect.set_options(timeout=30_000)  # a shared 2-core CI machine under load is slow to redraw

from mmdemo import ui  # noqa: E402
from mmdemo.app.registry import CheckpointRegistry  # noqa: E402
from mmdemo.datasets.sortofclevr import COLORS, LABELS, SceneObject, generate, render, write_examples  # noqa: E402
from mmdemo.inference.predictor import Predictor  # noqa: E402
from mmdemo.model.checkpoint import save_checkpoint  # noqa: E402
from mmdemo.model.classifier import build_model  # noqa: E402

from ..audit.scans import write_scans, wrong_rows  # noqa: E402
from ..browser import browser as chromium_browser  # noqa: E402
from ..browser import serve  # noqa: E402
from ..conftest import tiny_config  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints" / "sort-of-clevr"
COLUMNS = ["#", "row", "image", "question", "label", "prediction", "confidence", "correct", "qtype", "in scope"]


class Gate:
    """Lets ``batches`` calls of ``predict_batch`` through, then holds each next one until the
    test releases it: a run is stopped at a point the test chooses, not when a click lands."""

    def __init__(self, batches: int):
        self.batches, self.calls = batches, 0
        self.held, self.released = threading.Event(), threading.Event()

    def predict_batch(self, predictor: Predictor, *args, **kwargs):
        self.calls += 1
        if self.calls > self.batches:
            self.held.set()
            if not self.released.wait(300):
                raise TimeoutError("the test never opened the gate")
        return predictor.predict_batch(*args, **kwargs)


class _Gated:
    """A real predictor whose ``predict_batch`` passes through a gate first."""

    def __init__(self, predictor: Predictor, gate: Gate):
        self._predictor, self._gate = predictor, gate

    def __getattr__(self, name):
        return getattr(self._predictor, name)

    def predict_batch(self, *args, **kwargs):
        return self._gate.predict_batch(self._predictor, *args, **kwargs)


class GatedRegistry(CheckpointRegistry):
    """The app's registry; while a test sets ``gate``, the predictors it hands out go through it."""

    gate: Gate | None = None

    def predictor(self, name, owner=None):
        predictor = super().predictor(name, owner)
        return predictor if self.gate is None else _Gated(predictor, self.gate)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A server with two tiny checkpoints and the shipped one, a labelled upload with right and
    wrong rows, and its own data folder for ratings."""
    root = tmp_path_factory.mktemp("evaluate-browser")
    saved = os.environ.get("MMDEMO_DATA_DIR")
    os.environ["MMDEMO_DATA_DIR"] = str(root / "data")
    shipped = root / "shipped"
    torch.manual_seed(0)
    path = save_checkpoint(build_model(tiny_config(labels=LABELS)), shipped / "sort-of-clevr")
    write_examples(path / "examples")
    torch.manual_seed(1)
    save_checkpoint(build_model(tiny_config(labels=LABELS)), shipped / "other")
    (shipped / "real").symlink_to(SHIPPED, target_is_directory=True)
    save_checkpoint(build_model(tiny_config(labels=["bright", "dark", "no", "yes"])), shipped / "scans")

    # a labelled set: half the rows labelled with the tiny model's own answer (right), half not
    csv_path = generate(root / "set", 2, seed=5, phrasing="canonical")
    rows = list(csv.DictReader(open(csv_path, newline="")))
    predictor = Predictor.from_checkpoint(path, "cpu")
    answers = [p.label for p in predictor.predict_batch(
        [Image.open(root / "set" / r["image"]).convert("RGB") for r in rows], [r["text"] for r in rows])]  # fmt: skip
    for i, (row, answer) in enumerate(zip(rows, answers)):
        row["label"] = answer if i % 2 == 0 else next(x for x in LABELS[(i // 2) % 6 :] if x != answer)
    with open(root / "labelled.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "text", "label", "qtype"])
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("image", "text", "label", "qtype")} for r in rows)
    archive = shutil.make_archive(str(root / "images"), "zip", root_dir=root / "set", base_dir="images")
    wrong = sum(r["label"] != a for r, a in zip(rows, answers))
    assert 0 < wrong < len(rows)

    registry = GatedRegistry(root / "mine", shipped)
    app = ui.App(registry, work_dir=str(root / "work"))
    with serve(app) as url:
        yield {
            "url": url,
            "registry": registry,
            "root": root,
            "csv": str(root / "labelled.csv"),
            "zip": archive,
            "n": len(rows),
            "wrong": wrong,
            "shipped": shipped,
        }
    if saved is None:
        os.environ.pop("MMDEMO_DATA_DIR", None)
    else:
        os.environ["MMDEMO_DATA_DIR"] = saved


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as chromium:
        yield chromium


def _new_page(browser, url):
    page = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True).new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    return page


@pytest.fixture(scope="module")
def page(browser, site):
    """One visitor who has evaluated the labelled upload."""
    page = _new_page(browser, site["url"])
    page.get_by_role("tab", name="Evaluate").click()
    page.get_by_label("My labelled CSV").check()
    page.locator("#eval-csv input[type=file]").set_input_files(site["csv"])
    page.locator("#eval-zip input[type=file]").set_input_files(site["zip"])
    # the uploaded file's row, by its aria-label: its text can read "images .zip"
    expect(page.locator("#eval-zip").get_by_role("cell", name="images.zip", exact=True)).to_be_visible(timeout=60_000)
    page.locator("#eval-run").click()
    expect(page.locator("#eval-status")).to_contain_text("done", timeout=300_000)
    return page


def _rows(page, elem_id: str) -> list[list[str]]:
    """Every row of a (virtualised) Dataframe, scrolling through it."""
    viewport = page.locator(f"#{elem_id} .virtual-table-viewport")
    seen: dict[int, list[str]] = {}
    for _ in range(100):
        found = page.locator(f"#{elem_id} .virtual-row").evaluate_all(
            "rows => rows.map(r => [Number(r.dataset.index),"
            " [...r.querySelectorAll('[role=gridcell]')].map(c => c.innerText.trim())])"
        )
        seen.update({i: cells for i, cells in found})
        at_end = viewport.evaluate("v => { const end = v.scrollTop + v.clientHeight >= v.scrollHeight - 2;"
                                   " v.scrollBy(0, v.clientHeight / 2); return end; }")  # fmt: skip
        if at_end:
            break
        page.wait_for_timeout(50)
    viewport.evaluate("v => v.scrollTo(0, 0)")
    return [seen[i] for i in sorted(seen)]


def _count(page) -> int:
    text = page.locator("#eval-count").inner_text()
    return int(re.match(r"(\d+) of", text).group(1))


def _pick(page, elem_id: str, option: str):
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def test_wrong_only_lists_only_wrong_rows(page, site):
    expect(page.locator("#eval-count")).to_contain_text(f"{site['n']} of {site['n']} rows match")
    all_rows = _rows(page, "eval-rows")
    correct = COLUMNS.index("correct")
    assert len(all_rows) == site["n"] and {r[correct] for r in all_rows} == {"yes", "no"}
    page.locator("#eval-wrong-only input").check()
    expect(page.locator("#eval-count")).to_contain_text(f"{site['wrong']} of {site['n']} rows match")
    wrong_rows = _rows(page, "eval-rows")
    assert len(wrong_rows) == site["wrong"] and all(r[correct] == "no" for r in wrong_rows)
    assert all(r[COLUMNS.index("label")] != r[COLUMNS.index("prediction")] for r in wrong_rows)
    page.locator("#eval-wrong-only input").uncheck()
    expect(page.locator("#eval-count")).to_contain_text(f"{site['n']} of {site['n']} rows match")
    # by slice: the question type
    shapes = sum(r[COLUMNS.index("qtype")] == "shape" for r in all_rows)
    _pick(page, "eval-slice-value", "shape")
    expect(page.locator("#eval-count")).to_contain_text(f"{shapes} of {site['n']} rows match")
    assert {r[COLUMNS.index("qtype")] for r in _rows(page, "eval-rows")} == {"shape"}
    _pick(page, "eval-slice-value", "(all)")
    expect(page.locator("#eval-count")).to_contain_text(f"{site['n']} of {site['n']} rows match")


def test_a_reload_brings_back_the_open_tab_and_the_evaluation(page, site):
    """The evaluation is kept for the visitor's owner token, not for the page: a reload opens the
    tab that was open and shows the evaluation again; Compare & What-if is remembered too."""
    evaluate = page.get_by_role("tab", name="Evaluate")
    expect(evaluate).to_have_attribute("aria-selected", "true")
    page.reload()
    expect(evaluate).to_have_attribute("aria-selected", "true", timeout=30_000)
    expect(page.locator("#eval-status")).to_contain_text(f"done: {site['n']} rows", timeout=30_000)
    expect(page.locator("#eval-count")).to_contain_text(f"{site['n']} of {site['n']} rows match")
    assert len(_rows(page, "eval-rows")) == site["n"]
    page.get_by_role("tab", name="Compare & What-if").click()
    page.reload()
    expect(page.get_by_role("tab", name="Compare & What-if")).to_have_attribute("aria-selected", "true", timeout=30_000)
    evaluate.click()
    expect(page.locator("#eval-status")).to_contain_text(f"done: {site['n']} rows")


def test_confusion_cell_lists_exactly_its_rows(page, site):
    confusion = _rows(page, "eval-confusion")
    headers = page.locator("#eval-confusion th[role=columnheader]").evaluate_all(
        "hs => hs.map(h => h.innerText.trim())"
    )
    cells = [(r, c, int(v)) for r, row in enumerate(confusion) for c, v in enumerate(row[1:], 1) if v != "0"]
    assert sum(v for _, _, v in cells) == site["n"]
    off_diagonal = [(r, c, v) for r, c, v in cells if confusion[r][0] != headers[c]]
    diagonal = [(r, c, v) for r, c, v in cells if confusion[r][0] == headers[c]]
    for r, c, v in (off_diagonal[0], diagonal[0]):
        page.locator(f"#eval-confusion [data-testid=cell-{r}-{c}]").click()
        expect(page.locator("#eval-count")).to_contain_text(f"{v} of {site['n']} rows match")
        listed = _rows(page, "eval-rows")
        assert len(listed) == v
        assert all(
            row[COLUMNS.index("label")] == confusion[r][0] and row[COLUMNS.index("prediction")] == headers[c]
            for row in listed
        )
        expect(page.locator("#eval-true input")).to_have_value(confusion[r][0])
        expect(page.locator("#eval-predicted input")).to_have_value(headers[c])


def _select_first_row(page):
    page.locator("#eval-rows [data-testid=cell-0-3]").click()
    expect(page.locator("#eval-overlay img")).to_be_visible(timeout=30_000)
    expect(page.locator("#eval-detail")).to_contain_text("predicted")
    return page.locator("#eval-rows [data-testid=cell-0-3]").inner_text().strip()


def test_a_row_exports_and_opens_in_predict_and_explain(page):
    question = _select_first_row(page)
    page.locator("#eval-export").click()
    with zipfile.ZipFile(_download(page, "eval-export-file")) as z:
        assert sorted(z.namelist()) == ["overlay.png", "prediction.json"]
        document = json.loads(z.read("prediction.json"))
    assert document["settings"]["question"] == question and document["settings"]["checkpoint"] == "sort-of-clevr"
    assert len(document["word_maps"]) == len(document["tokens"]) > 0
    page.locator("#eval-open").scroll_into_view_if_needed()
    assert page.evaluate("window.scrollY") > 300, "the button is far down the Evaluate tab"
    page.locator("#eval-open").click()
    expect(page.get_by_role("tab", name="Predict & Explain")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#text-input textarea")).to_have_value(question)
    expect(page.locator("#image-input img")).to_be_visible(timeout=30_000)
    # it answers at once, at the top of the tab: the answer, its overlay and its charts in sight
    expect(page.locator("#prediction")).to_contain_text("%", timeout=60_000)
    expect(page.locator("#prediction")).not_to_contain_text("first use", timeout=60_000)  # loaded
    expect(page.locator("#timing")).to_contain_text("from sort-of-clevr")
    expect(page.locator("#overlay img")).to_be_visible()
    expect(page.locator("#prediction")).to_be_in_viewport()
    expect(page.get_by_role("tab", name="Predict & Explain")).to_be_in_viewport()
    expect(page.locator("#overlay img")).to_be_in_viewport()
    expect(page.locator("#word-region-matrix .js-plotly-plot")).to_be_visible()
    page.get_by_role("tab", name="Evaluate").click()


def _download(page, elem_id: str) -> Path:
    link = page.locator(f"#{elem_id} a").first
    expect(link).to_be_visible(timeout=60_000)
    with page.expect_download() as info:
        link.click()
    return Path(info.value.path())


def _rate(page, rating: str, comment: str):
    page.get_by_label(rating, exact=True).check()
    page.locator("#eval-comment textarea").fill(comment)
    page.locator("#eval-save-rating").click()


def test_ratings_survive_a_restart_and_two_raters_lose_nothing(page, browser, site):
    _select_first_row(page)
    # a second visitor evaluates the benchmark and rates at the same time as the first
    other = _new_page(browser, site["url"])
    other.get_by_role("tab", name="Evaluate").click()
    other.locator("#eval-scenes input").fill("1")
    other.locator("#eval-run").click()
    expect(other.locator("#eval-status")).to_contain_text("done", timeout=300_000)
    _select_first_row(other)
    _rate(page, "partly", "first rater: near the object")
    _rate(other, "wrong", "second rater: on the background")
    expect(page.locator("#eval-rating-status")).to_contain_text("Saved rating", timeout=30_000)
    expect(other.locator("#eval-rating-status")).to_contain_text("Saved rating", timeout=30_000)
    page.locator("#eval-export-ratings").click()
    exported = list(csv.DictReader(io.StringIO(_download(page, "eval-ratings-file").read_text())))
    assert [(r["comment"], r["rating"]) for r in exported] == [("first rater: near the object", "partly")]
    other.locator("#eval-export-ratings").click()
    theirs = list(csv.DictReader(io.StringIO(_download(other, "eval-ratings-file").read_text())))
    assert [r["comment"] for r in theirs] == ["second rater: on the background"]  # each gets their own only
    assert exported[0]["rater"] != theirs[0]["rater"]
    other.context.close()

    # a new server on the same data folder (a restart) has them; its host exports everyone's
    app = ui.App(CheckpointRegistry(site["root"] / "mine", site["shipped"]), work_dir=str(site["root"] / "work2"))
    os.environ["MMDEMO_RATINGS_EXPORT_ALL"] = "1"
    try:
        with serve(app) as url:
            fresh = _new_page(browser, url)
            fresh.wait_for_function("() => localStorage.getItem('mmdemo-owner-token')")  # the page has its token
            fresh.get_by_role("tab", name="Evaluate").click()
            expect(fresh.locator("#eval-ratings-summary")).to_contain_text("sort-of-clevr")
            summary = _rows(fresh, "eval-ratings-summary")
            assert ["sort-of-clevr", "0", "1", "1", "2"] in summary
            fresh.locator("#eval-export-ratings").click()
            again = list(csv.DictReader(io.StringIO(_download(fresh, "eval-ratings-file").read_text())))
            assert sorted(again, key=lambda r: r["id"]) == sorted([*exported, *theirs], key=lambda r: r["id"])
            fresh.context.close()
    finally:
        os.environ.pop("MMDEMO_RATINGS_EXPORT_ALL", None)


def test_the_report_shows_which_step_it_is_on(page, site):
    gate = site["registry"].gate = Gate(0)  # the first explanation of the sampled rows waits
    try:
        page.locator("#eval-report").click()
        file = page.locator("#eval-report-file")
        expect(file).to_contain_text("explaining the sampled rows with raw attention 0/", timeout=60_000)
        gate.released.set()
        expect(file.locator("a").first).to_be_visible(timeout=120_000)
    finally:
        gate.released.set()
        site["registry"].gate = None


def test_report_downloads_and_opens_offline(page, browser):
    page.locator("#eval-report").click()
    html = _download(page, "eval-report-file").read_text()
    assert "Evaluation report: sort-of-clevr" in html and "http://" not in html and "https://" not in html
    # faithfulness of both explanation methods, measured on a sample of the rows just evaluated
    measured = re.search(r"On this data set \((\d+) rows spread over (\d+)\)", html)
    assert measured and 0 < int(measured[1]) <= int(measured[2])
    assert "<td class='l'>raw</td>" in html and "<td class='l'>gradient</td>" in html
    offline = browser.new_context()
    requests = []
    offline.route("**/*", lambda route: (requests.append(route.request.url), route.abort()))
    view = offline.new_page()
    view.set_content(html)
    expect(view.locator("h1")).to_contain_text("Evaluation report")
    images = view.locator("img").evaluate_all("ims => ims.map(i => i.complete && i.naturalWidth > 0)")
    assert images and all(images)
    assert [u for u in requests if not u.startswith("data:")] == []
    offline.close()


def _image_bytes(page, selector: str) -> bytes:
    src = page.locator(selector).get_attribute("src")
    return page.request.get(src).body()


def test_compare_shows_two_heatmaps_for_two_checkpoints(browser, site):
    page = _new_page(browser, site["url"])
    page.get_by_role("tab", name="Compare & What-if").click()
    page.locator("#cmp-image input[type=file]").set_input_files(str(site["root"] / "set" / "images" / "0000.png"))
    # the 75 px scene is shown enlarged, as in Predict & Explain, not tiny in a big box
    expect(page.locator("#cmp-image img")).to_be_visible(timeout=30_000)
    assert page.locator("#cmp-image img").bounding_box()["height"] >= 200
    page.locator("#cmp-text textarea").fill("What shape is the red object?")
    _pick(page, "cmp-checkpoint-b", "other")
    page.locator("#cmp-method-b").get_by_label("raw").check()  # the same method: only the weights differ
    page.locator("#cmp-run").click()
    expect(page.locator("#cmp-summary")).to_contain_text("other (raw)", timeout=60_000)
    expect(page.locator("#cmp-summary")).to_contain_text("sort-of-clevr (raw)")
    for side in ("a", "b"):
        expect(page.locator(f"#cmp-overlay-{side} img")).to_be_visible(timeout=30_000)
        expect(page.locator(f"#cmp-label-{side}")).to_contain_text("%")
    a = Image.open(io.BytesIO(_image_bytes(page, "#cmp-overlay-a img")))
    b = Image.open(io.BytesIO(_image_bytes(page, "#cmp-overlay-b img")))
    assert a.size == b.size and a.tobytes() != b.tobytes()
    page.context.close()


def _scene(folder: Path) -> tuple[Path, list[SceneObject]]:
    scene = [
        SceneObject(c, "square" if i % 2 else "circle", x, y)
        for i, (c, (x, y)) in enumerate(zip(COLORS, [(12, 12), (60, 14), (35, 40), (15, 62), (58, 58), (40, 10)]))
    ]
    render(scene).save(folder / "scene.png")
    return folder / "scene.png", scene


def test_counterfactual_colour_swap_changes_the_answer(browser, site):
    path, scene = _scene(site["root"])
    red, green = scene[0], scene[1]  # red circle, green square
    page = _new_page(browser, site["url"])
    page.get_by_role("tab", name="Compare & What-if").click()
    page.locator("#wi-image input[type=file]").set_input_files(str(path))
    expect(page.locator("#wi-edited img")).to_be_visible(timeout=30_000)
    page.locator("#wi-text textarea").fill(f"What shape is the {red.color} object?")
    expect(page.locator("#wi-edit-text textarea")).to_have_value(f"What shape is the {red.color} object?")
    page.locator("#wi-edit-text textarea").fill(f"What shape is the {green.color} object?")
    _pick(page, "wi-checkpoint", "real")
    page.locator("#wi-run").click()
    expect(page.locator("#wi-summary")).to_contain_text("changed", timeout=300_000)
    assert red.shape == "circle" and green.shape == "square"
    expect(page.locator("#wi-label-before")).to_contain_text("circle")
    expect(page.locator("#wi-label-after")).to_contain_text("square")
    expect(page.locator("#wi-summary")).to_contain_text("circle → **square**".replace("**", ""))

    # blanking: a click on the red object paints it with the background
    image = page.locator("#wi-edited img")
    box = image.bounding_box()
    image.click(position={"x": red.x * box["width"] / 75, "y": red.y * box["height"] / 75})
    expect(page.locator("#wi-edits")).to_contain_text("1 square(s) blanked", timeout=30_000)
    edited = Image.open(io.BytesIO(_image_bytes(page, "#wi-edited img"))).convert("RGB")
    k = edited.width // 75  # shown enlarged, whole pixels
    assert k > 1 and edited.getpixel((red.x * k, red.y * k)) == (255, 255, 255)
    assert edited.getpixel((green.x * k, green.y * k)) == (0, 255, 0)
    page.locator("#wi-edit-text textarea").fill("")
    page.locator("#wi-run").click()
    expect(page.locator("#wi-summary")).to_contain_text("1 square(s) blanked", timeout=300_000)
    expect(page.locator("#wi-overlay-after img")).to_be_visible()
    page.context.close()


def test_compare_on_the_data_set_lists_disagreements(page, site):
    _pick(page, "eval-checkpoint-b", "other")
    page.locator("#eval-compare").click()
    summary = page.locator("#eval-compare-summary")
    expect(summary).to_contain_text("rows where the answers differ", timeout=300_000)
    n = int(re.search(r"(\d+) rows where the answers differ", summary.inner_text()).group(1))
    rows = _rows(page, "eval-disagree")
    assert 0 < n == len(rows) and all(r[5] != r[7] for r in rows)  # A predicted != B predicted


def test_compare_with_the_other_method_lists_rows_whose_heatmaps_peak_elsewhere(page, site):
    """The method never changes an answer: comparing raw with gradient lists the rows where the
    two heatmaps peak on different objects of the scene, each object named."""
    _pick(page, "eval-checkpoint-b", "sort-of-clevr")
    page.locator("#eval-method-b").get_by_label("gradient").check()
    page.locator("#eval-compare").click()
    summary = page.locator("#eval-compare-summary")
    expect(summary).to_contain_text("heatmaps peak on different objects", timeout=300_000)
    expect(summary).to_contain_text("give the same answers")
    n = int(re.search(r"(\d+) rows where the two heatmaps", summary.inner_text()).group(1))
    headers = page.locator("#eval-disagree th[role=columnheader]").evaluate_all("hs => hs.map(h => h.innerText.trim())")
    assert headers[-2:] == ["A peaks on (raw)", "B peaks on (gradient)"]
    rows = _rows(page, "eval-disagree")
    assert 0 < n == len(rows) and all(r[6] != r[7] and r[6].startswith("the object at (") for r in rows)
    page.locator("#eval-method-b").get_by_label("raw").check()  # the same checkpoint and method: nothing to compare
    page.locator("#eval-compare").click()
    expect(page.get_by_text("choose a second checkpoint").first).to_be_visible(timeout=30_000)


def test_a_long_run_shows_progress_and_stops(browser, site):
    """Stop, clicked while the run is held in its third batch, ends the run after that batch: the
    page shows the stopped status and exactly the rows done."""
    gate = site["registry"].gate = Gate(batches=2)
    try:
        page = _new_page(browser, site["url"])
        page.get_by_role("tab", name="Evaluate").click()
        page.locator("#eval-scenes input").fill("5")  # 100 rows: 7 batches of 16
        page.locator("#eval-run").click()
        assert gate.held.wait(300), "the run never reached its third batch"
        status = page.locator("#eval-status")
        expect(status).to_contain_text("32 / 100 rows", timeout=60_000)  # the progress bar's text
        page.locator("#eval-stop").click()
        expect(page.get_by_text("Stopping after the current batch")).to_be_visible()
        expect(status).not_to_contain_text("stopped")  # the run is still held in its batch
        gate.released.set()
        expect(status).to_contain_text("stopped after 48 of 100 rows", timeout=120_000)
        expect(page.locator("#eval-count")).to_contain_text("48 of 48 rows match")
        assert len(_rows(page, "eval-rows")) == 48 and gate.calls == 3  # no batch started after Stop
        page.context.close()
    finally:
        gate.released.set()
        site["registry"].gate = None


def _evaluate_upload(page, csv_path, zip_path, checkpoint: str):
    page.get_by_role("tab", name="Evaluate").click()
    _pick(page, "eval-checkpoint", checkpoint)
    page.get_by_label("My labelled CSV").check()
    page.locator("#eval-csv input[type=file]").set_input_files(str(csv_path))
    page.locator("#eval-zip input[type=file]").set_input_files(str(zip_path))
    expect(page.locator("#eval-zip").get_by_role("cell", name="images.zip", exact=True)).to_be_visible(timeout=60_000)
    page.locator("#eval-run").click()
    expect(page.locator("#eval-status")).to_contain_text("done", timeout=300_000)


def test_the_audit_flags_the_wrong_labels_and_gives_the_accuracy_without_them(browser, site, tmp_path):
    """An evaluated upload with three deliberately wrong labels: Audit lists exactly those rows with
    the label they should have, and the accuracy with and without them; a set too small to audit
    is told so in words."""
    small = write_scans(tmp_path / "small", n=5)
    small_zip = shutil.make_archive(
        str(tmp_path / "small" / "images"), "zip", root_dir=tmp_path / "small", base_dir="img"
    )
    wrong = (4, 11, 26)
    scans = write_scans(tmp_path / "scans", n=40, wrong=wrong)
    scans_zip = shutil.make_archive(
        str(tmp_path / "scans" / "images"), "zip", root_dir=tmp_path / "scans", base_dir="img"
    )
    page = _new_page(browser, site["url"])
    _evaluate_upload(page, small, small_zip, "scans")
    page.locator("#eval-audit").click()
    expect(page.get_by_text("too few to audit").first).to_be_visible(timeout=60_000)

    page.context.close()

    page = _new_page(browser, site["url"])
    _evaluate_upload(page, scans, scans_zip, "scans")
    expect(page.locator("#eval-status")).to_contain_text("done: 80 rows")
    page.locator("#eval-audit").click()
    summary = page.locator("#eval-audit-summary")
    expect(summary).to_contain_text("3 rows whose label looks wrong", timeout=300_000)
    flagged = _rows(page, "eval-audit-rows")
    assert {int(r[0]) for r in flagged} == wrong_rows(scans, wrong)
    first = "Is it bright or dark?"
    for row, image, text, given, suggested, _score in flagged:
        assert text == first and {given, suggested} == {"bright", "dark"}, (row, image, given, suggested)
    # the two accuracies, from the evaluation's own rows
    evaluated = _rows(page, "eval-rows")
    correct = [r[COLUMNS.index("correct")] == "yes" for r in evaluated]
    kept = [c for r, c in zip(evaluated, correct) if int(r[1]) not in {int(f[0]) for f in flagged}]
    text = summary.inner_text()
    assert f"{100 * sum(correct) / len(correct):.2f} % on all 80 rows" in text
    assert f"{100 * sum(kept) / len(kept):.2f} % without the 3 flagged (77 rows)" in text
    page.context.close()
