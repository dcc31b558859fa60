"""The Predict & Explain tab in a real browser, as a visitor uses it: pick an example with a
chosen checkpoint, click a word, build a question, leave the question empty; and the layout at
desktop and phone widths (the image, the question, Predict and an example on the first screen,
every tab's button in sight; after an answer every labelled block inside the viewport, none
overlapping another).

Skipped where Chromium is not installed, unless MMDEMO_REQUIRE_BROWSER=1.
"""

import os

import pytest

from ..browser import CHROMIUM, DESKTOP, PHONE, blocks_layout, browser, make_app, serve

if not os.path.exists(CHROMIUM) and os.environ.get("MMDEMO_REQUIRE_BROWSER") != "1":
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect

OTHER = ["alpha", "beta", "gamma"]


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with serve(make_app(tmp_path_factory.mktemp("browser-predict"), other=OTHER)) as url:
        yield url


@pytest.fixture(scope="module")
def chromium():
    with browser() as chromium:
        yield chromium


@pytest.fixture
def page(chromium, url):
    context = chromium.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.goto(url)
    expect(page.locator("#predict-button")).to_be_visible(timeout=30_000)
    yield page
    context.close()


def answer_of(page) -> str:
    return page.locator("#prediction").inner_text()


def test_an_example_is_answered_by_the_chosen_checkpoint_and_a_new_choice_answers_again(page):
    page.locator("#checkpoint input").click()
    page.get_by_role("option", name="other").click()
    page.locator("#examples").get_by_text("What shape is the red object?").click()
    expect(page.locator("#timing")).to_contain_text("from other", timeout=60_000)
    assert any(label in answer_of(page) for label in OTHER)
    assert not any(label in answer_of(page) for label in ("circle", "square", "left", "right", "top", "bottom"))
    expect(page.locator("#text-input textarea")).to_have_value("What shape is the red object?")
    # the answer is in view after the click
    box = page.locator("#prediction").bounding_box()
    assert box is not None and 0 <= box["y"] and box["y"] + box["height"] <= DESKTOP["height"]

    # picking another checkpoint answers again: no stale result stays on screen
    page.locator("#checkpoint input").click()
    page.get_by_role("option", name="sort-of-clevr").click()
    expect(page.locator("#timing")).to_contain_text("from sort-of-clevr", timeout=60_000)
    assert not any(label in answer_of(page) for label in OTHER)
    # and so does another explanation method
    page.locator("#method").get_by_text("gradient", exact=True).click()
    expect(page.locator("#timing")).to_contain_text("gradient attention", timeout=60_000)


def test_clicking_a_word_shows_its_map_and_marks_it(page):
    page.locator("#examples").get_by_text("What shape is the object closest to the orange object?").click()
    expect(page.locator("#prediction")).to_contain_text("%", timeout=60_000)
    expect(page.locator("#prediction")).not_to_contain_text("first use", timeout=60_000)  # loaded
    overlay = page.locator("#overlay img")
    expect(overlay).to_be_visible(timeout=30_000)
    whole = overlay.get_attribute("src")
    grid = page.locator("#word-maps img").get_attribute("src")

    page.locator("#words").get_by_text("orange", exact=True).click()
    expect(page.locator("#overlay")).to_contain_text("Where the model looked for “orange”", timeout=10_000)
    expect(page.locator("#words")).to_contain_text("[orange]")
    assert overlay.get_attribute("src") != whole
    assert page.locator("#word-maps img").get_attribute("src") != grid  # the framed tile moved

    # clicking it again goes back to the whole question
    page.locator("#words").get_by_text("[orange]").click()
    expect(page.locator("#overlay")).not_to_contain_text("“orange”", timeout=10_000)
    expect(page.locator("#words")).not_to_contain_text("[orange]")


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_a_clicked_word_keeps_the_overlay_it_changes_in_sight(chromium, url, viewport):
    """The word list is above the overlay: the visitor scrolled to the words clicks one and sees
    the overlay change right below it, without scrolling back up."""
    context = chromium.new_context(viewport=viewport)
    page = context.new_page()
    page.goto(url)
    page.locator("#examples").get_by_text("What shape is the object closest to the orange object?").click()
    expect(page.locator("#prediction")).to_contain_text("%", timeout=60_000)
    expect(page.locator("#prediction")).not_to_contain_text("first use", timeout=60_000)  # loaded
    expect(page.locator("#overlay img")).to_be_visible(timeout=30_000)
    assert page.locator("#words").bounding_box()["y"] < page.locator("#overlay").bounding_box()["y"]
    word = page.locator("#words").get_by_text("orange", exact=True)
    word.scroll_into_view_if_needed()
    word.click()
    expect(page.locator("#overlay")).to_contain_text("Where the model looked for “orange”", timeout=10_000)
    expect(page.locator("#overlay img")).to_be_in_viewport(ratio=0.5)
    context.close()


def test_the_question_builder_fills_the_question(page):
    page.locator("#capabilities").get_by_text("What this checkpoint can answer").click()
    # its text says the examples are above it
    assert page.locator("#examples").bounding_box()["y"] < page.locator("#capabilities-text").bounding_box()["y"]
    expect(page.locator("#capabilities-text")).to_contain_text("or pick an example above")
    expect(page.locator("#capabilities-text")).to_contain_text("What `sort-of-clevr` can answer".replace("`", ""))
    expect(page.locator("#capabilities-text")).to_contain_text(
        "Its 12 answers: circle, square, left, right, top, bottom, 1, 2"
    )
    page.locator("#question-slot").get_by_text("blue", exact=True).click()
    page.locator("#question-kind").get_by_text("closest", exact=True).click()
    expect(page.locator("#text-input textarea")).to_have_value("What shape is the object closest to the blue object?")


def test_an_empty_question_is_marked_on_the_question_only(page, fixture_path):
    page.locator("#image-input input[type=file]").set_input_files(fixture_path("chelsea.jpg"))
    expect(page.locator("#image-input img")).to_be_visible(timeout=10_000)
    page.locator("#predict-button").click()
    expect(page.locator("#text-input")).to_contain_text("Type a question", timeout=10_000)
    page.wait_for_timeout(500)
    # no output is painted with an error badge, no error toast
    assert page.locator("#prediction .error, #overlay .error, .toast-body.error").count() == 0
    assert page.locator("#prediction").inner_text().count("%") == 0


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_layout_fits_the_screen_after_an_answer(chromium, url, viewport):
    context = chromium.new_context(viewport=viewport)
    page = context.new_page()
    page.goto(url)
    page.locator("#examples").get_by_text("What shape is the object closest to the orange object?").click()
    expect(page.locator("#prediction")).to_contain_text("%", timeout=60_000)
    expect(page.locator("#prediction")).not_to_contain_text("first use", timeout=60_000)  # loaded
    expect(page.locator("#word-maps img")).to_be_visible(timeout=30_000)
    page.get_by_text("Explanation as JSON").click()
    page.wait_for_timeout(1000)
    layout = blocks_layout(page)
    assert layout["width"] <= viewport["width"], "the page scrolls sideways"
    outside = [b["id"] for b in layout["boxes"] if b["left"] < -1 or b["right"] > viewport["width"] + 1]
    assert not outside, f"blocks cut off at the sides: {outside}"
    assert not layout["overlaps"], f"blocks overlapping: {layout['overlaps']}"
    assert len(layout["boxes"]) >= 10
    # the input scene (75 px) is shown large
    image = page.locator("#image-input img").bounding_box()
    assert image["height"] >= 200
    if viewport is PHONE:  # no Plotly toolbar over the labels and titles
        toolbars = page.locator(".modebar-container").evaluate_all("bars => bars.filter(b => b.offsetParent).length")
        assert toolbars == 0
    context.close()


FIRST_SCREEN = {"image": "#image-input", "question": "#text-input", "Predict": "#predict-button",
                "first example": "#examples tbody tr"}  # fmt: skip
TABS = ["Predict & Explain", "Fine-tune", "Teach", "Evaluate", "Compare & What-if"]


def inside(box: dict | None, viewport: dict) -> bool:
    return (
        box is not None
        and box["x"] >= 0
        and box["y"] >= 0
        and box["x"] + box["width"] <= viewport["width"]
        and box["y"] + box["height"] <= viewport["height"]
    )


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_the_first_screen_shows_the_image_the_question_predict_an_example_and_every_tab(chromium, url, viewport):
    context = chromium.new_context(viewport=viewport)
    page = context.new_page()
    page.goto(url)
    expect(page.locator("#examples tbody img").first).to_be_visible(timeout=30_000)
    page.wait_for_function("() => [...document.querySelectorAll('#examples img')].every(i => i.complete)")
    boxes = {name: page.locator(selector).first.bounding_box() for name, selector in FIRST_SCREEN.items()}
    below = {name: box for name, box in boxes.items() if not inside(box, viewport)}
    assert not below, f"not on the first screen at {viewport}: {below}"
    # every tab's button in sight, none behind Gradio's overflow menu
    for name in TABS:
        tab = page.get_by_role("tab", name=name)
        expect(tab).to_be_visible()
        assert inside(tab.bounding_box(), viewport), name
    expect(page.locator(".overflow-menu")).to_have_count(0)
    context.close()
