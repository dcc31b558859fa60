"""The Gradio UI: ``create_demo(app) -> gr.Blocks``. It only wires components to the service
layer (``App``: checkpoints, predictions, fine-tune jobs) and the pure renderers.

This is the only module that imports gradio.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
import time
from pathlib import Path

import gradio as gr
import torch

from . import render
from .data import read_csv
from .explain import DEFAULT_METHOD, METHODS, peak_xy
from .imaging import decode_image
from .jobs import CheckpointRegistry, JobManager, extract_zip, validate_name
from .sortofclevr import generate
from .train import TrainSettings

NEW_MODEL = "(new model)"
DEFAULT_CHECKPOINT = "sort-of-clevr"
EXAMPLE_DATASET_IMAGES = 150


class App:
    """What the UI needs from the service layer, in one object."""

    def __init__(self, registry: CheckpointRegistry | None = None, work_dir: str | None = None):
        self.registry = registry or CheckpointRegistry()
        self.jobs = JobManager(self.registry)
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="mmdemo-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)

    def default_checkpoint(self) -> str | None:
        names = self.registry.names()
        return DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT in names else (names[0] if names else None)

    def examples(self) -> list[list[str]]:
        """(image, question) pairs shipped with the default checkpoint, for the gallery."""
        name = self.default_checkpoint()
        if not name:
            return []
        listing = self.registry.path(name) / "examples" / "examples.csv"
        if not listing.is_file():
            return []
        rows = list(csv.DictReader(open(listing, newline="")))
        return [[str(listing.parent / r["image"]), r["text"]] for r in rows]


# -- Predict & Explain ---------------------------------------------------------------------
try:  # ZeroGPU on Hugging Face Spaces: GPU-bound handlers get a GPU while they run
    import spaces

    gpu = spaces.GPU
except ImportError:

    def gpu(fn):
        return fn


@gpu
def predict(app: App, image_path, text, checkpoint, method, opacity):
    """Handler of /predict: component values for every output of the Predict tab."""
    if not image_path:
        raise gr.Error("Please upload an image (or pick an example).")
    if not text or not str(text).strip():
        raise gr.Error("Please type a question or a description of the image.")
    checkpoint = checkpoint or app.default_checkpoint()
    method = method or DEFAULT_METHOD
    try:
        predictor = app.registry.predictor(checkpoint)
        image = decode_image(image_path, name="the image")
        start = time.perf_counter()
        prediction = predictor.predict_batch([image], [text], method)[0]
        contributions = predictor.modality_contributions(image, text)
        elapsed = (time.perf_counter() - start) * 1000
    except ValueError as e:
        raise gr.Error(str(e)) from None
    e = prediction.explanation
    info = (
        f"Inference: {elapsed:.0f} ms on {predictor.device} (model {prediction.forward_ms:.0f} ms) with `{checkpoint}`."
    )
    if prediction.truncated:
        info += f" The text was longer than {predictor.config.max_tokens} tokens and was truncated."
    state = {
        "image": image_path,
        "explanation": prediction.to_json(),
        "word_maps": e.word_maps.tolist(),
        "selected": None,
    }
    return (
        prediction.scores,
        state["explanation"],
        render.overlay(image, e.heatmap, opacity, e.peak_xy),
        list(zip(e.words, e.word_scores)),
        render.attention_matrix(e.words, e.token_region, tuple(e.heatmap.shape)),
        render.modality_chart(contributions),
        info,
        state,
    )


def redraw(state, opacity, selection: gr.SelectData | None = None):
    """Overlay for the whole text, or for the selected word; no model call."""
    if not state:
        return None, state
    if selection is not None:
        state = {**state, "selected": selection.index if state.get("selected") != selection.index else None}
    explanation = state["explanation"]
    image = decode_image(state["image"], name="the image")
    index = state.get("selected")
    if index is not None and index < len(state["word_maps"]):
        grid = torch.tensor(state["word_maps"][index])
        return render.overlay(image, grid, opacity, peak_xy(grid, image.size)), state
    return render.overlay(image, torch.tensor(explanation["heatmap"]), opacity, tuple(explanation["peak_xy"])), state


# -- Fine-tune -----------------------------------------------------------------------------
def _guess(columns: list[str], *names: str) -> str | None:
    lowered = {c.lower(): c for c in columns}
    for n in names:
        if n in lowered:
            return lowered[n]
    return columns[0] if columns else None


def csv_columns(csv_file):
    """Column dropdowns pre-filled by name when a CSV is uploaded."""
    if not csv_file:
        return [gr.update(choices=[], value=None)] * 3
    try:
        with open(csv_file, newline="", encoding="utf-8-sig") as f:
            columns = next(csv.reader(f), [])
    except (UnicodeDecodeError, csv.Error) as e:
        raise gr.Error(f"cannot read the CSV header: {e}") from None
    guesses = (
        _guess(columns, "image", "image_path", "path", "file", "filename"),
        _guess(columns, "text", "question", "caption", "prompt"),
        _guess(columns, "label", "answer", "class", "target"),
    )
    return [gr.update(choices=columns, value=g) for g in guesses]


def _prepare(app: App, csv_file, zip_file, image_col, text_col, label_col):
    """Uploads -> validated Dataset, confined to the upload folder."""
    if not csv_file:
        raise gr.Error("Upload a CSV file, or press 'Use example dataset'.")
    folder = Path(tempfile.mkdtemp(prefix="upload-", dir=app.work_dir))
    try:
        if zip_file:
            extract_zip(zip_file, folder)
        csv_path = folder / "data.csv"
        if Path(csv_file).resolve() != csv_path.resolve():
            shutil.copyfile(csv_file, csv_path)
        return read_csv(
            csv_path, image_col or "image", text_col or "text", label_col or "label", image_root=folder, confine=True
        )
    except ValueError as e:
        raise gr.Error(str(e)) from None


def preflight(app: App, csv_file, zip_file, image_col, text_col, label_col) -> str:
    dataset = _prepare(app, csv_file, zip_file, image_col, text_col, label_col)
    return "```\n" + dataset.report() + "\n```"


def example_dataset(app: App):
    """A small generated Sort-of-CLEVR set: a CSV plus a zip of its images."""
    folder = Path(tempfile.mkdtemp(prefix="example-", dir=app.work_dir))
    csv_path = generate(folder / "sort-of-clevr", EXAMPLE_DATASET_IMAGES, seed=7)
    archive = shutil.make_archive(str(folder / "images"), "zip", root_dir=csv_path.parent, base_dir="images")
    rows = list(csv.DictReader(open(csv_path, newline="")))
    slim = folder / "sort-of-clevr.csv"
    with open(slim, "w", newline="") as f:  # the standard three columns
        writer = csv.DictWriter(f, fieldnames=["image", "text", "label"])
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("image", "text", "label")} for r in rows)
    return str(slim), archive, *csv_columns(str(slim))


def start_finetune(
    app: App,
    csv_file,
    zip_file,
    image_col,
    text_col,
    label_col,
    base,
    epochs,
    lr,
    batch_size,
    freeze,
    val_split,
    name,
    overwrite,
):
    """Handler of /start_finetune: validates everything, starts the background job."""
    try:
        name = validate_name(name)
    except ValueError as e:
        raise gr.Error(str(e)) from None
    if app.jobs.running():
        raise gr.Error("A fine-tune job is already running (one at a time); watch its progress below or stop it.")
    dataset = _prepare(app, csv_file, zip_file, image_col, text_col, label_col)
    settings = TrainSettings(
        epochs=int(epochs),
        lr=float(lr),
        encoder_lr=float(lr) / 3,
        batch_size=int(batch_size),
        freeze=list(freeze or []),
    )
    try:
        status = app.jobs.start(
            dataset, settings, name, None if base in (None, "", NEW_MODEL) else base, bool(overwrite), float(val_split)
        )
    except ValueError as e:
        raise gr.Error(str(e)) from None
    return status


def finetune_status(app: App) -> dict:
    """Handler of /finetune_status."""
    return app.jobs.status()


def stop_finetune(app: App) -> dict:
    """Handler of /stop_finetune."""
    return app.jobs.stop()


def status_views(app: App, status: dict):
    """Component values for a job status: text, bar, curves, confusion, per-class table."""
    pct = int(round(100 * status["progress"]))
    bar = (
        f"<div style='border:1px solid #999;border-radius:4px;height:18px;width:100%'>"
        f"<div id='ft-bar' style='background:#4c8bf5;height:100%;width:{pct}%'></div></div>"
    )
    text = f"**{status['state']}** ({pct}%, {status['elapsed_s']:.0f} s) - {status['message']}"
    curves = render.training_curves(status["history"]) if status["history"] else None
    report = status.get("report") or {}
    confusion = render.confusion_figure(report["confusion"]) if report.get("confusion") else None
    table = (
        [
            [label, round(v["precision"], 3), round(v["recall"], 3), round(v["f1"], 3), v["support"]]
            for label, v in report["per_class"].items()
        ]
        if report.get("per_class")
        else []
    )
    return text, bar, curves, confusion, table


# -- Layout ----------------------------------------------------------------------------------
def create_demo(app: App) -> gr.Blocks:
    default = app.default_checkpoint()
    with gr.Blocks(title="mmdemo: explainable image + text classifier", delete_cache=(3600, 7200)) as demo:
        gr.Markdown(
            "# mmdemo\nAsk a question about an image; see the answer, **where** the model looked for each word, "
            "which words mattered, and what each modality contributed. Fine-tune on your own CSV in the second tab."
        )
        with gr.Tab("Predict & Explain"):
            state = gr.State(None)
            with gr.Row():
                with gr.Column():
                    image = gr.Image(
                        type="filepath", sources=["upload", "clipboard", "webcam"], label="Image", elem_id="image-input"
                    )
                    text = gr.Textbox(
                        label="Question or text", placeholder="What shape is the red object?", elem_id="text-input"
                    )
                    with gr.Row():
                        checkpoint = gr.Dropdown(
                            app.registry.names(),
                            value=default,
                            label="Checkpoint",
                            elem_id="checkpoint",
                            allow_custom_value=True,
                        )
                        refresh = gr.Button("Refresh list", size="sm")
                    with gr.Row():
                        method = gr.Radio(
                            list(METHODS),
                            value=DEFAULT_METHOD,
                            label="Explanation",
                            info="gradient: attention x gradient (class-specific); raw: attention weights",
                        )
                        opacity = gr.Slider(0, 1, value=0.55, step=0.05, label="Heatmap opacity")
                    button = gr.Button("Predict", variant="primary", elem_id="predict-button")
                with gr.Column():
                    label = gr.Label(num_top_classes=5, label="Prediction", elem_id="prediction")
                    overlay = gr.Image(
                        label="Where the model looked (click a word below for its own map)",
                        elem_id="overlay",
                        interactive=False,
                    )
                    words = gr.HighlightedText(label="Word importance", elem_id="words", interactive=False)
                    info = gr.Markdown(elem_id="timing")
            with gr.Row():
                matrix = gr.Plot(label="Word x region attention")
                modality = gr.Plot(label="Modality contributions")
            explanation = gr.JSON(label="Explanation (JSON, as the API returns it)", open=False)
            outputs = [label, explanation, overlay, words, matrix, modality, info, state]
            button.click(
                lambda *a: predict(app, *a),
                [image, text, checkpoint, method, opacity],
                outputs,
                api_name="predict",
                concurrency_limit=2,
                concurrency_id="predict",
            )
            examples = app.examples()
            if examples:
                gr.Examples(
                    examples,
                    [image, text],
                    outputs,
                    fn=lambda i, t: predict(app, i, t, default, DEFAULT_METHOD, 0.55),
                    cache_examples=True,
                    cache_mode="lazy",
                    label="Examples (click one)",
                    api_name=False,
                )
            opacity.release(redraw, [state, opacity], [overlay, state], api_name=False, queue=False)
            words.select(redraw, [state, opacity], [overlay, state], api_name=False, queue=False)
            refresh.click(
                lambda: gr.update(choices=app.registry.names()), None, checkpoint, api_name=False, queue=False
            )

        with gr.Tab("Fine-tune"):
            gr.Markdown(
                "Upload a CSV with an image column (paths relative to the zip's root), a text column and a label column, "
                "plus a zip of the images; or use the example dataset. Check the data, then train."
            )
            with gr.Row():
                csv_file = gr.File(label="CSV", file_types=[".csv"], type="filepath", elem_id="csv-upload")
                zip_file = gr.File(
                    label="Images (zip, optional)", file_types=[".zip"], type="filepath", elem_id="zip-upload"
                )
            example_button = gr.Button("Use example dataset", elem_id="example-dataset")
            with gr.Row():
                image_col = gr.Dropdown([], label="Image column", allow_custom_value=True)
                text_col = gr.Dropdown([], label="Text column", allow_custom_value=True)
                label_col = gr.Dropdown([], label="Label column", allow_custom_value=True)
            check = gr.Button("Check data")
            report = gr.Markdown(elem_id="preflight")
            with gr.Row():
                base = gr.Dropdown(
                    [NEW_MODEL, *app.registry.names()], value=NEW_MODEL, label="Start from", allow_custom_value=True
                )
                epochs = gr.Number(5, label="Epochs", precision=0, minimum=1, maximum=200)
                lr = gr.Number(3e-4, label="Learning rate", minimum=1e-6, maximum=1e-1)
                batch_size = gr.Number(64, label="Batch size", precision=0, minimum=1, maximum=1024)
            with gr.Row():
                freeze = gr.CheckboxGroup(
                    ["image_encoder", "text_encoder"], value=["image_encoder", "text_encoder"], label="Freeze"
                )
                val_split = gr.Slider(0.05, 0.5, value=0.1, step=0.05, label="Validation split (of the images)")
                name = gr.Textbox("my-model", label="New checkpoint name", elem_id="checkpoint-name")
                overwrite = gr.Checkbox(False, label="Overwrite if it exists")
            with gr.Row():
                start = gr.Button("Start", variant="primary", elem_id="start-button")
                stop = gr.Button("Stop", variant="stop")
            status_text = gr.Markdown(elem_id="job-status")
            status_bar = gr.HTML()
            curves = gr.Plot(label="Curves", elem_id="curves")
            with gr.Row():
                confusion = gr.Plot(label="Confusion matrix")
                per_class = gr.Dataframe(
                    headers=["label", "precision", "recall", "f1", "support"], label="Per class", interactive=False
                )
            with gr.Row():
                download_name = gr.Dropdown(app.registry.names(), label="Checkpoint to download")
                download = gr.Button("Zip it")
                download_file = gr.File(label="Download", interactive=False)
            job = gr.JSON(visible=False)
            status_outputs = [status_text, status_bar, curves, confusion, per_class]

            csv_file.upload(csv_columns, csv_file, [image_col, text_col, label_col], api_name=False)
            example_button.click(
                lambda: example_dataset(app), None, [csv_file, zip_file, image_col, text_col, label_col], api_name=False
            )
            check.click(
                lambda *a: preflight(app, *a),
                [csv_file, zip_file, image_col, text_col, label_col],
                report,
                api_name="preflight",
            )
            start.click(
                lambda *a: start_finetune(app, *a),
                [
                    csv_file,
                    zip_file,
                    image_col,
                    text_col,
                    label_col,
                    base,
                    epochs,
                    lr,
                    batch_size,
                    freeze,
                    val_split,
                    name,
                    overwrite,
                ],
                job,
                api_name="start_finetune",
                concurrency_limit=1,
                concurrency_id="train",
            ).then(lambda s: status_views(app, s), job, status_outputs, api_name=False)
            stop.click(lambda: stop_finetune(app), None, job, api_name="stop_finetune")
            gr.Button("status", visible=False).click(
                lambda: finetune_status(app), None, job, api_name="finetune_status"
            )

            known_names = gr.State(None)

            def poll(known):
                """Job status for this page; checkpoint lists only when they changed (a list
                refreshed every second would close a dropdown the user has open)."""
                names = app.registry.names()
                lists = (
                    [gr.skip()] * 3
                    if names == known
                    else [gr.update(choices=names), gr.update(choices=[NEW_MODEL, *names]), gr.update(choices=names)]
                )
                return (*status_views(app, app.jobs.status()), *lists, names)

            poll_outputs = [*status_outputs, checkpoint, base, download_name, known_names]
            timer = gr.Timer(1.0)
            timer.tick(poll, known_names, poll_outputs, api_name=False, queue=False, show_progress="hidden")
            download.click(lambda n: _zip(app, n), download_name, download_file, api_name=False)
        demo.load(poll, known_names, poll_outputs, api_name=False, queue=False)
    return demo


def _zip(app: App, name: str | None):
    if not name:
        raise gr.Error("Pick a checkpoint to download.")
    try:
        return str(app.registry.zip(name, tempfile.mkdtemp(dir=app.work_dir)))
    except ValueError as e:
        raise gr.Error(str(e)) from None
