"""The Fine-tune tab: CSV + zip (or the example dataset) -> column mapping, pre-flight report,
settings, a background job with live curves, then the report and a new checkpoint."""

from __future__ import annotations

import csv
import shutil
import tempfile
from pathlib import Path

import gradio as gr

from .. import render
from ..data import read_csv
from ..registry import validate_name
from ..train import TrainSettings
from ..uploads import extract_zip
from ..webapp import App

NEW_MODEL = "(new model)"


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
    """The example dataset's CSV and zip, with the column dropdowns filled."""
    csv_path, archive = app.example_dataset()
    return csv_path, archive, *csv_columns(csv_path)


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


def finetune_tab(app: App, checkpoint: gr.Dropdown):
    """The tab's components and events; returns (poll, its inputs, its outputs) for page load."""
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
        gr.Button("status", visible=False).click(lambda: finetune_status(app), None, job, api_name="finetune_status")

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
    return poll, known_names, poll_outputs


def _zip(app: App, name: str | None):
    if not name:
        raise gr.Error("Pick a checkpoint to download.")
    try:
        return str(app.registry.zip(name, tempfile.mkdtemp(dir=app.work_dir)))
    except ValueError as e:
        raise gr.Error(str(e)) from None
