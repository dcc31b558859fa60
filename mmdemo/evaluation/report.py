"""Hand-offs for people who were not in the room: one self-contained HTML evaluation report,
and a per-prediction export (overlay PNG + JSON).

The report is a single file that opens offline: figures are inline SVG, images are PNG data
URIs, styles are inline, and there is no link to anything outside the file (no http(s), no
relative paths, no scripts). Figures are drawn here as SVG because no installed library draws
a static chart offline (matplotlib is not installed; Plotly's static export needs kaleido and
a browser) and inlining plotly.js would add 4.8 MB to every report.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from markdown_it import MarkdownIt
from PIL import Image

from ..explain import render
from ..imaging import decode_image
from ..model.checkpoint import read_card
from .engine import EvalResult, RowResult, summarize, worst_errors
from .ratings import RATING_TEXT, RATINGS

OPACITY = 0.55

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.muted{color:#666}.card{background:#fafafa;border:1px solid #ddd;padding:0 1em}
.errors{display:flex;flex-wrap:wrap;gap:1em}.err{width:250px;font-size:.9em}.err img{width:250px;image-rendering:pixelated}
pre{white-space:pre-wrap;word-break:break-all}.ok{color:#1a7f37}.bad{color:#c62828}
"""


def _png_data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def row_overlay(row: RowResult, opacity: float = OPACITY) -> Image.Image:
    """A result row's heatmap over its image, peak marked."""
    image = decode_image(row.image, name=row.image_name)
    return render.overlay(image, torch.tensor(row.heatmap), opacity, row.peak_xy)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _table(headers: list[str], rows: list[list], left: int = 1) -> str:
    head = "".join(f"<th class='l'>{html.escape(str(h))}</th>" if i < left else f"<th>{html.escape(str(h))}</th>"
                   for i, h in enumerate(headers))  # fmt: skip
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='l'>{html.escape(str(v))}</td>" if i < left else f"<td>{html.escape(str(v))}</td>"
            for i, v in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def reliability_svg(calibration: dict, size: int = 320) -> str:
    """Reliability diagram: accuracy per confidence bin (bars) against the diagonal."""
    pad, inner = 40, size - 60
    parts = [
        f"<svg width='{size}' height='{size}' role='img' aria-label='reliability diagram'>",
        f"<rect x='{pad}' y='10' width='{inner}' height='{inner}' fill='none' stroke='#999'/>",
        f"<line x1='{pad}' y1='{10 + inner}' x2='{pad + inner}' y2='10' stroke='#999' stroke-dasharray='4 3'/>",
    ]
    for b in calibration["bins"]:
        if b["count"]:
            x = pad + b["lo"] * inner
            w = (b["hi"] - b["lo"]) * inner
            h = b["accuracy"] * inner
            parts.append(
                f"<rect x='{x:.1f}' y='{10 + inner - h:.1f}' width='{w:.1f}' height='{h:.1f}' fill='#4c8bf5'"
                f" fill-opacity='0.8' stroke='#fff'><title>{b['lo']:.2f}-{b['hi']:.2f}: accuracy "
                f"{b['accuracy']:.3f}, confidence {b['confidence']:.3f}, n={b['count']}</title></rect>"
            )
    for t in (0, 0.5, 1):
        parts.append(f"<text x='{pad + t * inner:.0f}' y='{size - 30}' font-size='11' text-anchor='middle'>{t}</text>")
        parts.append(f"<text x='{pad - 6}' y='{14 + (1 - t) * inner:.0f}' font-size='11' text-anchor='end'>{t}</text>")
    parts.append(f"<text x='{pad + inner / 2}' y='{size - 12}' font-size='12' text-anchor='middle'>confidence</text>")
    parts.append(
        f"<text x='12' y='{10 + inner / 2}' font-size='12' text-anchor='middle'"
        f" transform='rotate(-90 12 {10 + inner / 2})'>accuracy</text></svg>"
    )
    return "".join(parts)


def bars_svg(values: dict[str, float], width: int = 480) -> str:
    """Horizontal bars in [0, 1], one per key (accuracy per slice value)."""
    row, label_w = 22, 130
    height = 10 + row * len(values)
    inner = width - label_w - 60
    parts = [f"<svg width='{width}' height='{height}' role='img'>"]
    for i, (name, v) in enumerate(values.items()):
        y = 5 + i * row
        parts.append(
            f"<text x='{label_w - 6}' y='{y + 15}' font-size='12' text-anchor='end'>{html.escape(str(name)[:20])}</text>"
        )
        parts.append(f"<rect x='{label_w}' y='{y + 3}' width='{v * inner:.1f}' height='{row - 6}' fill='#4c8bf5'/>")
        parts.append(f"<text x='{label_w + v * inner + 4:.1f}' y='{y + 15}' font-size='12'>{100 * v:.1f} %</text>")
    parts.append("</svg>")
    return "".join(parts)


URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s<>\"']*", re.IGNORECASE)


def _card_html(card_markdown: str) -> str:
    """The model card as HTML, pointing nowhere: links keep their text, images their alt text,
    and any address left in the text is replaced (the report must not reach outside itself)."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.add_render_rule("link_open", lambda *a: "")
    md.add_render_rule("link_close", lambda *a: "")
    md.add_render_rule("image", lambda renderer, tokens, idx, *a: html.escape(tokens[idx].content))
    body = re.sub(
        r"<(/?)h([1-4])>", lambda m: f"<{m[1]}h{int(m[2]) + 2}>", md.render(card_markdown)
    )  # under "Model card"
    return URL.sub("(address removed)", body)


def recorded_faithfulness(checkpoint: str | Path) -> dict | None:
    """Faithfulness figures saved in a checkpoint's training record (its benchmark's, as
    ``bench-sort-of-clevr`` measured them), where it has them."""
    try:
        training = read_card(checkpoint)
    except (OSError, ValueError):
        return None
    return (training.get("benchmark") or {}).get("faithfulness") or training.get("faithfulness") or None


def faithfulness_rows(figures: dict) -> list[list]:
    """One table row per explanation method of a faithfulness measurement
    (faithfulness.dataset_faithfulness): deletion area, the same in random order, insertion
    area, rank correlation with the heatmaps of the re-initialised fusion."""
    fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
    return [
        [
            method,
            fmt(f.get("deletion_auc")),
            fmt(f.get("random_deletion_auc")),
            fmt(f.get("insertion_auc")),
            fmt(f.get("randomisation_rank_correlation")),
        ]
        for method, f in figures.items()
        if isinstance(f, dict)
    ]


FAITHFULNESS_HEADERS = [
    "method",
    "deletion area (lower: faithful)",
    "deletion area, random order",
    "insertion area (higher: faithful)",
    "rank corr. with re-initialised fusion (near 0: passes)",
]


def build_report(
    result: EvalResult,
    card_markdown: str = "",
    ratings_summary: dict[str, dict[str, int]] | None = None,
    faithfulness: dict | None = None,
    n_errors: int = 8,
    *,
    recorded: dict | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> str:
    """The evaluation report as one self-contained HTML document. ``faithfulness``: measured on
    a sample of this data set (evalset.faithfulness); ``recorded``: the checkpoint's own
    benchmark figures (recorded_faithfulness). ``progress(what, done, total)`` as each error's
    heatmap is drawn. With several tasks: a table of every task's figures, then a section per
    task (metrics, calibration, slices, worst errors)."""
    summary = summarize(result)
    e = html.escape
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Evaluation report: {e(result.checkpoint)}</title><style>{STYLE}</style></head><body>",
        f"<h1>Evaluation report: {e(result.checkpoint)}</h1>",
        f"<p class='muted'>Data: {e(result.dataset)} · explanation method: {e(result.method)} · "
        f"written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}</p>",
    ]
    if result.stopped:
        out.append(f"<p class='bad'>The evaluation was stopped early: {len(result.rows)} of {result.n_total} rows.</p>")

    if not result.tasks:
        out += _metrics_html(result, summary, "h2", "h3")
        out += _faithfulness_html(summary, faithfulness, recorded)
        out += _slices_and_errors_html(result, n_errors, progress, "h2", "h3")
    else:
        out.append("<h2>Tasks</h2>")
        out.append(
            f"<p>The checkpoint answers {len(result.tasks)} tasks, each evaluated on the rows with a label for it; "
            "each heatmap explains its own task's answer.</p>"
        )
        out.append(
            _table(
                ["task", "rows", "accuracy", "macro-F1", "ECE (15 bins)"],
                [
                    [task, s["rows_evaluated"], _pct(s["accuracy"]), f"{s['macro_f1']:.4f}", f"{s['ece']:.4f}"]
                    for task, s in summary["tasks"].items()
                ],
            )
        )
        for task, sub in result.tasks.items():
            out.append(f"<h2>Task: {e(task)}</h2>")
            out += _metrics_html(sub, summary["tasks"][task], "h3", "h4")
            out += _slices_and_errors_html(sub, n_errors, progress, "h3", "h4")
        out += _faithfulness_html(summary, faithfulness, recorded)

    out.append("<h2>Stakeholder ratings of the explanations</h2>")
    if ratings_summary:
        out.append(
            _table(
                ["checkpoint", *[RATING_TEXT[r] for r in RATINGS], "total"],
                [[name, *[s[r] for r in RATINGS], s["total"]] for name, s in ratings_summary.items()],
            )
        )
    else:
        out.append("<p class='muted'>No ratings yet.</p>")

    out.append("<h2>Model card</h2>")
    out.append(f"<div class='card'>{_card_html(card_markdown)}</div>" if card_markdown else "<p>No model card.</p>")
    out.append("</body></html>")
    return "\n".join(out)


def _metrics_html(result: EvalResult, summary: dict, h2: str, h3: str) -> list[str]:
    """Metrics, per-class figures, the confusion matrix and the reliability diagram of one task."""
    out = [f"<{h2}>Metrics</{h2}>"]
    metrics = [
        ["rows evaluated", f"{summary['rows_evaluated']:,}"],
        ["rows rejected (unreadable or incomplete)", f"{summary['rows_rejected']:,}"],
        ["accuracy", _pct(summary["accuracy"])],
        ["macro-F1", f"{summary['macro_f1']:.4f}"],
        ["expected calibration error (15 bins)", f"{summary['ece']:.4f}"],
        ["mean confidence", f"{summary['calibration']['mean_confidence']:.4f}"],
    ]
    if "out_of_scope" in summary:
        metrics.append(["flagged out of scope", f"{summary['out_of_scope']:,}"])
    out.append(_table(["metric", "value"], metrics))
    out.append(f"<{h3}>Per class</{h3}>")
    out.append(
        _table(
            ["label", "precision", "recall", "F1", "support"],
            [
                [label, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", v["support"]]
                for label, v in summary["per_class"].items()
                if v["support"] or any(r.prediction == label for r in result.rows)
            ],
        )
    )
    labels, matrix = summary["confusion"]["labels"], summary["confusion"]["matrix"]
    used = [i for i, label in enumerate(labels) if sum(matrix[i]) or sum(row[i] for row in matrix)]
    out.append(f"<{h3}>Confusion matrix (rows: true label, columns: predicted)</{h3}>")
    out.append(
        _table(
            ["true \\ predicted", *[labels[j] for j in used]],
            [[labels[i], *[matrix[i][j] for j in used]] for i in used],
        )
    )

    out.append(f"<{h2}>Calibration</{h2}>")
    out.append(
        f"<p>Expected calibration error {summary['ece']:.4f}: bars are the accuracy of the rows whose "
        "confidence falls in each bin; a calibrated model's bars reach the diagonal.</p>"
    )
    out.append(reliability_svg(summary["calibration"]))
    return out


def _faithfulness_html(summary: dict, faithfulness: dict | None, recorded: dict | None) -> list[str]:
    """Pointing and faithfulness of the heatmaps (of the first task's answers)."""
    out = ["<h2>Faithfulness and pointing</h2>"]
    if "pointing" in summary:
        p = summary["pointing"]
        out.append(
            f"<p>Heatmap peak inside the asked object (non-relational questions, n={p['n']}): "
            f"{_pct(p['peak_in_asked_object'])}</p>"
        )
    out.append(
        "<p>Deletion: the answer's probability as the heatmap's cells are blanked, hottest first, against "
        "a random order (area under the curve; a faithful heatmap's falls faster). Insertion: the cells put "
        "back onto a blank image, hottest first. Model randomisation (Adebayo et al. 2018): the rank "
        "correlation between each heatmap and the heatmap of the same model with its fusion weights "
        "re-initialised; a heatmap that explains the model changes (correlation near 0).</p>"
    )
    if faithfulness:
        out.append(
            f"<h3>On this data set ({faithfulness['rows']} rows spread over "
            f"{faithfulness.get('sampled_from', faithfulness['rows'])})</h3>"
        )
        out.append(_table(FAITHFULNESS_HEADERS, faithfulness_rows(faithfulness)))
    if recorded:
        out.append(
            f"<h3>Recorded in the checkpoint's benchmark ({recorded.get('rows', '?')} questions on fresh scenes)</h3>"
        )
        out.append(_table(FAITHFULNESS_HEADERS, faithfulness_rows(recorded)))
    if not faithfulness and not recorded and "pointing" not in summary:
        out.append("<p class='muted'>Not measured for this checkpoint and data set.</p>")
    return out


def _slices_and_errors_html(
    result: EvalResult, n_errors: int, progress: Callable[[str, int, int], None] | None, h2: str, h3: str
) -> list[str]:
    """Accuracy per slice value and the worst errors with their heatmaps, of one task."""
    e = html.escape
    out = [f"<{h2}>Slices</{h2}>"]
    if not result.slice_columns:
        out.append("<p class='muted'>The data set has no column to slice by.</p>")
    for column in result.slice_columns:
        values = summarize(result, column)["slices"]["values"]
        out.append(f"<{h3}>Accuracy per {e(column)}</{h3}>")
        out.append(_table([column, "rows", "accuracy"], [[v, s["n"], _pct(s["accuracy"])] for v, s in values.items()]))
        if len(values) <= 30:
            out.append(bars_svg({v: s["accuracy"] for v, s in values.items()}))

    out.append(f"<{h2}>Worst errors</{h2}>")
    errors = worst_errors(result, n_errors)
    if not errors:
        out.append("<p>No errors.</p>")
        return out
    out.append(
        "<p>The wrong answers given with the highest confidence, with the heatmap of where the model looked.</p>"
    )
    out.append("<div class='errors'>")
    for done, r in enumerate(errors):
        if progress:
            progress("drawing the heatmaps of the worst errors", done, len(errors))
        out.append(
            f"<div class='err'><img alt='heatmap for row {r.row}' src='{_png_data_uri(row_overlay(r))}'>"
            f"<div><b>{e(r.text)}</b></div><div>true: {e(r.label)} · predicted: "
            f"<span class='bad'>{e(r.prediction)}</span> ({_pct(r.confidence)})</div>"
            f"<div class='muted'>row {r.row}, {e(r.image_name)}</div></div>"
        )
    out.append("</div>")
    return out


def export_prediction(
    out_dir: str | Path, image: Image.Image, prediction_json: dict, word_maps: list, settings: dict
) -> Path:
    """One prediction as a zip: ``overlay.png`` (heatmap over the image, peak marked) and
    ``prediction.json`` (label, scores, words and their scores, heatmap, word maps, settings)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    overlay = render.overlay(
        image,
        torch.tensor(prediction_json["heatmap"]),
        settings.get("opacity", OPACITY),
        tuple(prediction_json["peak_xy"]),
    )
    png = io.BytesIO()
    overlay.save(png, format="PNG")
    document = {**prediction_json, "word_maps": word_maps, "settings": settings}
    path = out_dir / "prediction.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("overlay.png", png.getvalue())
        archive.writestr("prediction.json", json.dumps(document, indent=1))
    return path
