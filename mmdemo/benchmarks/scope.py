"""The out-of-scope benchmark (``python -m mmdemo bench-scope``): how often the checkpoint's
out-of-scope check flags in-scope inputs (fresh scenes with canonical, held-out and paraphrased
questions; scenes from other renderers; scenes re-encoded as JPEG, resized, blurred, screenshot)
and out-of-scope ones (photos, photo thumbnails, non-scene images, unanswerable questions).

None of these sets is fitted on: the scope statistics come from ``fit-scope`` or training.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from ..datasets.sortofclevr import QUESTION_TYPES
from ..inference.predictor import Predictor
from .sort_of_clevr import rounded

# In-scope wordings an independent generator might use (none is a training phrasing), and
# questions the model cannot answer. Used by ``bench-scope``; none of them is fitted on.
PARAPHRASES = {
    "shape": (
        "What is the shape of the {c} object?",
        "what shape is the {c} object",
        "WHAT SHAPE IS THE {C} OBJECT?",
        "Is the {c} object a circle or a square?",
        "What shape does the {c} object have?",
    ),
    "horizontal": (
        "Is the {c} object on the left or right?",
        "Is the {c} object on the left or the right?",
        "Is the {c} object located on the left or on the right?",
        "is the {c} object on the left or on the right",
    ),
    "vertical": (
        "Is the {c} object on the top or bottom?",
        "Is the {c} object at the top or bottom?",
        "Is the {c} object in the top or the bottom half?",
    ),
    "closest": (
        "What is the shape of the object closest to the {c} object?",
        "What shape is the object that is closest to the {c} object?",
        "What shape is the object nearest to the {c} one?",
    ),
    "furthest": (
        "What is the shape of the object furthest from the {c} object?",
        "What shape is the object farthest from the {c} object?",
        "What shape is the object that is furthest from the {c} object?",
    ),
    "count": (
        "How many objects have the same shape as the {c} object?",
        "How many objects are the same shape as the {c} object?",
        "How many objects have the same shape as the {c} one?",
    ),
}
UNKNOWN_COLORS = ("purple", "pink", "brown", "black", "white", "cyan", "magenta", "violet")
UNANSWERABLE = (
    "What animal is in this picture?",
    "How many {c} objects are there?",
    "What colour is the object on the left?",
    "What color is the object on the right?",
    "Which object is at the top?",
    "How many circles are there?",
    "How many squares are in the image?",
    "How many objects are there?",
    "Is the {c} object bigger than the {d} object?",
    "Is the {c} object above the {d} object?",
    "What is the distance between the {c} and {d} objects?",
    "What colour is the square closest to the {c} object?",
    "What is the colour of the circle?",
    "Is there a {u} circle?",
    "Describe this image.",
    "Tell me a joke.",
    "What is the capital of France?",
    "Who painted this?",
    "Is it raining?",
    "What time is it?",
    "Count the {c} objects.",
    "Which colour is the largest object?",
    "Is the dog on the left or right?",
    "How many people are in this photo?",
)


def render_variant(scene, size: int, supersample: int, radius: float, background: tuple[int, int, int]):
    """A deliberately different renderer of the same scene spec (another image size, object
    size, anti-aliasing by supersampling, background): a stand-in for an independent generator."""
    from PIL import Image, ImageDraw

    from ..datasets.sortofclevr import COLORS, SIZE

    big = size * supersample
    scale = big / SIZE
    image = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(image)
    for obj in scene:
        r = radius * scale
        box = (obj.x * scale - r, obj.y * scale - r, obj.x * scale + r, obj.y * scale + r)
        (draw.rectangle if obj.shape == "square" else draw.ellipse)(box, fill=COLORS[obj.color])
    return image.resize((size, size), Image.LANCZOS)


RENDER_VARIANTS = {
    "antialiased 128 px": dict(size=128, supersample=4, radius=5, background=(255, 255, 255)),
    "antialiased 75 px, off-white": dict(size=75, supersample=4, radius=5, background=(250, 250, 248)),
    "256 px, radius 6": dict(size=256, supersample=2, radius=6, background=(255, 255, 255)),
    "64 px, radius 4, no anti-aliasing": dict(size=64, supersample=1, radius=4, background=(255, 255, 255)),
    "150 px, radius 5.5": dict(size=150, supersample=3, radius=5.5, background=(253, 253, 253)),
}


def _jpeg(image, quality: int):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer).convert("RGB")


def _screenshot(image):
    """A scene as a screenshot shows it: upscaled 2x, a display's colour shift, a thin frame."""
    import numpy as np
    from PIL import Image

    big = np.asarray(image.resize((image.width * 2, image.height * 2), Image.BICUBIC), dtype=np.float32)
    shifted = Image.fromarray(np.clip(big * 0.96 + 6, 0, 255).astype(np.uint8))
    framed = Image.new("RGB", (shifted.width + 6, shifted.height + 6), (200, 200, 200))
    framed.paste(shifted, (3, 3))
    return framed


def reencodings() -> dict:
    """Benign re-encodings of an in-scope image, each a fixed transform (the fitting draws its
    own at random when it fits the scope): what bench-scope reports one flag rate for each of."""
    from PIL import Image, ImageFilter

    out = {f"JPEG q{q}": (lambda im, q=q: _jpeg(im, q)) for q in (50, 60, 70, 80, 90, 95)}
    for size in (50, 100, 150, 224, 300):
        for name, method in (("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)):
            out[f"resized to {size} px, {name}"] = lambda im, s=size, m=method: im.resize((s, s), m)
    out["resized to 150 px, then JPEG q80"] = lambda im: _jpeg(im.resize((150, 150), Image.BICUBIC), 80)
    for radius in (0.5, 0.7, 1.0):
        out[f"blur radius {radius}"] = lambda im, r=radius: im.filter(ImageFilter.GaussianBlur(r))
    out["screenshot (2x, colour shift, frame)"] = _screenshot
    out["screenshot, then JPEG q75"] = lambda im: _jpeg(_screenshot(im), 75)
    return out


def non_scene_images(fixtures: Path | None = None) -> dict[str, object]:
    """Photos (scikit-image's sample data where installed, plus the repository's test photos)
    and drawn images that are not scenes."""
    import numpy as np
    from PIL import Image, ImageDraw

    images = {}
    try:
        import skimage.data as samples

        for name in ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "page", "text",
                     "brick", "grass", "horse", "retina", "colorwheel", "logo", "immunohistochemistry"):  # fmt: skip
            a = getattr(samples, name)()
            a = a if a.dtype == np.uint8 else (a * 255).astype(np.uint8)
            images[f"photo:{name}"] = Image.fromarray(a).convert("RGB")
    except ImportError:
        pass
    for path in sorted((fixtures or Path(__file__).resolve().parents[2] / "tests" / "fixtures").glob("*.jpg")):
        images[f"photo:{path.stem}.jpg"] = Image.open(path).convert("RGB")
    images["blank white"] = Image.new("RGB", (75, 75), (255, 255, 255))
    images["black"] = Image.new("RGB", (75, 75), (0, 0, 0))
    images["solid red"] = Image.new("RGB", (75, 75), (255, 0, 0))
    images["noise"] = Image.fromarray(np.random.default_rng(0).integers(0, 256, (75, 75, 3), dtype=np.uint8))
    text = Image.new("RGB", (200, 100), (255, 255, 255))
    ImageDraw.Draw(text).text((10, 40), "Quarterly report 2024", fill=(0, 0, 0))
    images["text on white"] = text
    chart = Image.new("RGB", (200, 150), (255, 255, 255))
    for i, h in enumerate((40, 80, 60, 120)):
        ImageDraw.Draw(chart).rectangle((20 + i * 40, 140 - h, 45 + i * 40, 140), fill=(30, 90, 200))
    images["bar chart"] = chart
    gradient = np.tile(np.linspace(0, 255, 128, dtype=np.uint8)[None, :, None], (128, 1, 3))
    images["grey gradient"] = Image.fromarray(gradient)
    return images


def scope_benchmark(checkpoint: Path, n_images: int, seed: int, device: str | None = None) -> dict:
    """Flag rates of out-of-scope detection: in-scope sets (fresh scenes with canonical,
    held-out and paraphrased questions; scenes from other renderers; the scenes re-encoded as
    JPEG, resized, blurred, screenshot) should be flagged rarely, out-of-scope sets (photos,
    photo thumbnails, non-scene images, unanswerable questions) nearly always."""
    import numpy as np
    from PIL import Image

    from ..datasets.sortofclevr import COLORS, HELD_OUT, PHRASINGS, answer, random_scene, render

    start = time.perf_counter()
    predictor = Predictor.from_checkpoint(checkpoint, device)
    if predictor.scope is None:
        raise ValueError(f"{checkpoint} has no scope statistics (run python -m mmdemo fit-scope)")
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng) for _ in range(n_images)]
    colors = list(COLORS)

    def question(templates: dict, qtype: str, color: str) -> str:
        t = templates[qtype][int(rng.integers(len(templates[qtype])))]
        return t.replace("{C}", color.upper()).format(c=color)

    def in_scope_rows(templates: dict, images: list) -> list[tuple]:
        rows = []
        for scene, image in zip(scenes, images):
            for qtype in QUESTION_TYPES:
                color = colors[int(rng.integers(len(colors)))]
                label = answer(scene, qtype, color)[0]
                text = question(templates, qtype, color)
                if "gray" in text and rng.random() < 0.5:
                    text = text.replace("gray", "grey")
                rows.append((image, text, label, qtype))
        return rows

    rendered = [render(s) for s in scenes]
    sets = {
        "in: canonical wording": in_scope_rows({q: p[:1] for q, p in PHRASINGS.items()}, rendered),
        "in: held-out wording": in_scope_rows(HELD_OUT, rendered),
        "in: paraphrases (incl. grey, case, punctuation)": in_scope_rows(PARAPHRASES, rendered),
    }
    for name, variant in RENDER_VARIANTS.items():
        sets[f"in: renderer {name}"] = in_scope_rows(PARAPHRASES, [render_variant(s, **variant) for s in scenes])
    canonical = {q: p[:1] for q, p in PHRASINGS.items()}
    for name, transform in reencodings().items():
        sets[f"in: re-encoded, {name}"] = in_scope_rows(canonical, [transform(image) for image in rendered])
    images = non_scene_images()
    photos = {name: image for name, image in images.items() if name.startswith("photo:")}
    thumbnails = {name: _jpeg(image.resize((75, 75), Image.BICUBIC), 60) for name, image in photos.items()}
    others = {name: image for name, image in images.items() if name not in photos}

    def scene_questions(group: dict) -> list[tuple]:
        return [
            (image, question(canonical, q, colors[i % 6]), None, "oos")
            for image in group.values()
            for i, q in enumerate(QUESTION_TYPES)
        ] + [(image, "What animal is in this picture?", None, "oos") for image in group.values()]

    sets["out: photos, scene questions"] = scene_questions(photos)
    sets["out: photos as 75 px JPEG q60 thumbnails, scene questions"] = scene_questions(thumbnails)
    sets["out: non-scene images, scene questions"] = scene_questions(others)

    def unanswerable(template: str) -> str:
        c, d = rng.choice(colors, 2, replace=False)
        return template.format(c=c, d=d, u=UNKNOWN_COLORS[int(rng.integers(len(UNKNOWN_COLORS)))])

    sets["out: unknown colour"] = [
        (rendered[i % n_images], question(PHRASINGS, q, UNKNOWN_COLORS[i % len(UNKNOWN_COLORS)]), None, "oos")
        for i, q in enumerate(QUESTION_TYPES * max(1, n_images // 6))
    ]
    sets["out: other question kinds and unrelated text"] = [
        (rendered[i % n_images], unanswerable(t), None, "oos")
        for i, t in enumerate(UNANSWERABLE * max(1, n_images // 10))
    ]
    result: dict = {"checkpoint": str(checkpoint), "images": n_images, "seed": seed, "sets": {}}
    missed: dict[str, list] = {}
    for name, rows in sets.items():
        flagged, correct, kept_correct, reasons = [], [], [], Counter()
        for begin in range(0, len(rows), 64):
            batch = rows[begin : begin + 64]
            for (_, text, label, _), p in zip(
                batch, predictor.predict_batch([r[0] for r in batch], [r[1] for r in batch])
            ):
                flagged.append(not p.in_scope)
                reasons.update(p.scope["reasons"])
                if label is not None:
                    correct.append(p.label == label)
                    if p.in_scope:
                        kept_correct.append(p.label == label)
                if name.startswith("out") and p.in_scope:
                    missed.setdefault(name, []).append(text)
                if name.startswith("in") and not p.in_scope and len(missed.setdefault(name, [])) < 10:
                    missed[name].append(f"{text} [{' '.join(p.scope['reasons'])}]")
        entry = {"n": len(rows), "flagged": sum(flagged) / len(rows), "reasons": dict(reasons)}
        if correct:
            entry["accuracy"] = sum(correct) / len(correct)
            entry["accuracy_unflagged"] = sum(kept_correct) / max(1, len(kept_correct))
        result["sets"][name] = entry
    ins = [e for n, e in result["sets"].items() if n.startswith("in")]
    outs = [e for n, e in result["sets"].items() if n.startswith("out")]
    result["in_scope_flagged"] = sum(e["flagged"] * e["n"] for e in ins) / sum(e["n"] for e in ins)
    reencoded = [e for n, e in result["sets"].items() if n.startswith("in: re-encoded")]
    result["reencoded_flagged"] = sum(e["flagged"] * e["n"] for e in reencoded) / sum(e["n"] for e in reencoded)
    result["out_of_scope_flagged"] = sum(e["flagged"] * e["n"] for e in outs) / sum(e["n"] for e in outs)
    result["examples_missed"] = {k: sorted(set(v))[:10] for k, v in missed.items()}
    result["seconds"] = round(time.perf_counter() - start, 1)
    return rounded(result)


def scope_table(result: dict) -> str:
    """bench-scope's figures as a table: each set's rows, flag rate, rows flagged for their
    image, and accuracy (all rows / rows not flagged)."""
    lines = [f"{'set':74} {'rows':>5} {'flagged':>8} {'image':>6} {'accuracy':>9} {'unflagged':>9}"]
    for name, e in result["sets"].items():
        image = e["reasons"].get("image", 0) / e["n"]
        accuracy = f"{e['accuracy']:9.1%} {e['accuracy_unflagged']:9.1%}" if "accuracy" in e else ""
        lines.append(f"{name:74} {e['n']:5} {e['flagged']:8.1%} {image:6.1%} {accuracy}")
    lines.append(
        f"in scope flagged {result['in_scope_flagged']:.1%} (re-encoded {result['reencoded_flagged']:.1%}),"
        f" out of scope flagged {result['out_of_scope_flagged']:.1%}"
    )
    return "\n".join(lines)
