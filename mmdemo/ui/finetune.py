"""The Fine-tune tab: CSV + zip (or the example dataset) -> column mapping, pre-flight report,
settings, a background job with live curves, then the report and a new checkpoint."""

from __future__ import annotations

import csv
import html

import gradio as gr

from .. import render
from ..registry import validate_name
from ..train import TrainSettings
from ..webapp import App
from .identity import owner_of, refuse, unexpected

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
            columns = next(csv.reader([f.readline(65536)]), [])
    except (UnicodeDecodeError, csv.Error) as e:
        raise refuse(f"cannot read the CSV header: {e}") from None
    guesses = (
        _guess(columns, "image", "image_path", "path", "file", "filename"),
        _guess(columns, "text", "question", "caption", "prompt"),
        _guess(columns, "label", "answer", "class", "target"),
    )
    return [gr.update(choices=columns, value=g) for g in guesses]


def preflight(app: App, csv_file, zip_file, image_col, text_col, label_col) -> str:
    """Handler of /preflight: the report, or a refusal naming what is wrong; the upload folder
    is removed either way."""
    try:
        return "```\n" + app.preflight(csv_file, zip_file, (image_col, text_col, label_col)) + "\n```"
    except ValueError as e:
        raise refuse(str(e)) from None
    except Exception as e:  # noqa: BLE001 - the server keeps serving
        raise unexpected("checking the data", e) from None


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
    owner: str = "",
):
    """Handler of /start_finetune: validates everything, queues the job of ``owner``."""
    try:
        name = validate_name(name)
        settings = TrainSettings(
            epochs=int(epochs),
            lr=float(lr),
            encoder_lr=float(lr) / 3,
            batch_size=int(batch_size),
            freeze=[str(f) for f in freeze or []],
        )
        if settings.batch_size < 1 or not 0 < settings.lr <= 1:
            raise ValueError("batch size must be at least 1 and the learning rate in (0, 1]")
        if not 0 < float(val_split) < 1:
            raise ValueError(f"the validation split must be between 0 and 1, got {val_split}")
        bad = [f for f in settings.freeze if f not in ("image_encoder", "text_encoder")]
        if bad:
            raise ValueError(f"unknown part(s) to freeze {bad}; use image_encoder, text_encoder")
        return app.start_job(
            owner,
            csv_file,
            zip_file,
            (image_col, text_col, label_col),
            settings,
            name,
            None if base in (None, "", NEW_MODEL) else str(base),
            bool(overwrite),
            float(val_split),
        )
    except (ValueError, TypeError) as e:
        raise refuse(str(e)) from None
    except Exception as e:  # noqa: BLE001 - the server keeps serving
        raise unexpected("starting the fine-tune", e) from None


def finetune_status(app: App, owner: str | None) -> dict:
    """Handler of /finetune_status: the visitor's own latest job."""
    return app.jobs.status(owner or "")


def stop_finetune(app: App, owner: str | None) -> dict:
    """Handler of /stop_finetune: stops the visitor's own job, at any phase."""
    if owner is None:
        raise refuse("no owner token: pass the owner_token /start_finetune returned")
    return app.jobs.stop(owner)


def status_views(app: App, status: dict):
    """Component values for a job status: text, bar, curves, confusion, per-class table."""
    pct = int(round(100 * status["progress"]))
    bar = (
        f"<div style='border:1px solid #999;border-radius:4px;height:18px;width:100%'>"
        f"<div id='ft-bar' style='background:#4c8bf5;height:100%;width:{pct}%'></div></div>"
    )
    message = html.escape(status["message"], quote=False)  # may quote the user's data
    text = f"**{status['state']}** ({pct}%, {status['elapsed_s']:.0f} s) - {message}"
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


def finetune_tab(app: App, checkpoint: gr.Dropdown, tokens: tuple[gr.BrowserState, gr.State]):
    """The tab's components and events; returns (poll, its inputs, its outputs) for page load.
    ``tokens``: the visitor's owner token components (ui/identity.py)."""
    owner_token, session_token = tokens
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

        def on_start(
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
            owner_token=None,
            session_token=None,
            profile: gr.OAuthProfile | None = None,
        ):
            """A visitor without a token (a new gradio_client) gets one: returned once in the
            status as ``owner_token`` and kept in this session."""
            owner = owner_of(app, owner_token, session_token, profile)
            new_token = None
            if owner is None:
                new_token = app.new_token()
                owner = app.owner(new_token)
            status = start_finetune(
                app,
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
                owner,
            )
            if new_token:
                status = {**status, "owner_token": new_token}
            return status, new_token or session_token

        start.click(
            on_start,
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
                owner_token,
                session_token,
            ],
            [job, session_token],
            api_name="start_finetune",
            concurrency_limit=1,
            concurrency_id="train",
        ).then(lambda s: status_views(app, s), job, status_outputs, api_name=False)

        def on_stop(owner_token=None, session_token=None, profile: gr.OAuthProfile | None = None):
            return stop_finetune(app, owner_of(app, owner_token, session_token, profile))

        def on_status(owner_token=None, session_token=None, profile: gr.OAuthProfile | None = None):
            return finetune_status(app, owner_of(app, owner_token, session_token, profile))

        def on_delete(name, owner_token=None, session_token=None, profile: gr.OAuthProfile | None = None):
            """Handler of /delete_checkpoint: the visitor's own checkpoints only."""
            owner = owner_of(app, owner_token, session_token, profile)
            try:
                if owner is None:
                    raise ValueError("no owner token: pass the owner_token /start_finetune returned")
                app.registry.delete(str(name or ""), owner)
            except ValueError as e:
                raise refuse(str(e)) from None
            return app.registry.names(owner)

        stop.click(on_stop, [owner_token, session_token], job, api_name="stop_finetune")
        gr.Button("status", visible=False).click(
            on_status, [owner_token, session_token], job, api_name="finetune_status"
        )
        deleted = gr.JSON(visible=False)
        gr.Button("delete", visible=False).click(
            on_delete, [name, owner_token, session_token], deleted, api_name="delete_checkpoint"
        )

        known_names = gr.State(None, time_to_live=app.limits.session_ttl_min * 60)

        def poll(known, owner_token=None, session_token=None, profile: gr.OAuthProfile | None = None):
            """Job status for this page; checkpoint lists only when they changed (a list
            refreshed every second would close a dropdown the user has open)."""
            owner = owner_of(app, owner_token, session_token, profile)
            names = app.registry.names(owner)
            lists = (
                [gr.skip()] * 3
                if names == known
                else [gr.update(choices=names), gr.update(choices=[NEW_MODEL, *names]), gr.update(choices=names)]
            )
            return (*status_views(app, finetune_status(app, owner)), *lists, names)

        poll_inputs = [known_names, owner_token, session_token]
        poll_outputs = [*status_outputs, checkpoint, base, download_name, known_names]
        timer = gr.Timer(1.0)
        timer.tick(poll, poll_inputs, poll_outputs, api_name=False, queue=False, show_progress="hidden")

        def on_download(name, owner_token=None, session_token=None, profile: gr.OAuthProfile | None = None):
            if not name:
                raise refuse("Pick a checkpoint to download.")
            try:
                return app.download(str(name), owner_of(app, owner_token, session_token, profile))
            except ValueError as e:
                raise refuse(str(e)) from None

        download.click(on_download, [download_name, owner_token, session_token], download_file, api_name=False)
    return poll, poll_inputs, poll_outputs
