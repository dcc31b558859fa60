"""The Fine-tune tab: CSV + zip (or the example dataset) -> column roles guessed from the
content, pre-flight report with the recipe's plan and time estimate, a time budget, settings
(automatic by default; kept in the browser across reloads), a background job with a message for
each phase and live curves, then the report and a new checkpoint; Resume for a job that was
stopped, interrupted or cut by its time limit.

Settings are the CLI's: the recipe (mmdemo/training/recipe.py) chooses every value the user did not set.
In the tab, "Automatic settings" leaves all of them to it; a custom value the user edits turns
it off, and then the custom values win. Through the API a value left out (None) is the recipe's.

Handlers are named functions with typed, named parameters (they name the API's parameters);
``/start_finetune`` keeps the README's 13 positional arguments, new ones come last with defaults.
"""

from __future__ import annotations

import csv
import html
from pathlib import Path

import gradio as gr

from .. import render
from ..app.backend import App
from ..app.registry import validate_name
from ..datasets.csv_table import guess_columns, sniff_separator
from ..training.recipe import format_seconds
from .common import OPTIONAL_STRING, api_type, code_block, input_error, markdown_text
from .identity import owner_of, refuse, unexpected
from .zerogpu import finetune_device

NEW_MODEL = "(new model)"
PREVIEW_ROWS = 200  # rows read to guess the column roles


def _read_head(csv_file: str) -> tuple[list[str], list[list[str]]]:
    try:
        with open(csv_file, newline="", encoding="utf-8-sig") as f:
            # bounded: at most PREVIEW_ROWS lines of at most 64 KB each are read
            lines = [f.readline(65536) for _ in range(PREVIEW_ROWS + 1)]
            reader = csv.reader((line for line in lines if line), delimiter=sniff_separator(lines[0]))
            header = next(reader, [])
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise input_error("csv", f"cannot read the CSV: {e}") from None
    return header, rows


def csv_columns(csv_file):
    """Column dropdowns pre-filled from the CSV's content (image paths, text, few-valued label)."""
    if not csv_file:
        return [gr.update(choices=[], value=None)] * 3
    header, rows = _read_head(csv_file)
    guess = guess_columns(header, rows)
    return [gr.update(choices=header, value=v) for v in (guess.image, guess.text, guess.label)]


def column_report(app: App, csv_file) -> tuple[str, object]:
    """Why each column was guessed (or what to pick), and the suggested 'Start from'."""
    if not csv_file:
        return "", gr.skip()
    header, rows = _read_head(csv_file)
    guess = guess_columns(header, rows)
    lines = ["**Columns guessed from their content** (change them if they are wrong):"]
    lines += [f"- {markdown_text(reason)}" for reason in guess.reasons]  # quotes the CSV's header
    if guess.unsure:
        lines.append("**Please pick the column(s) marked above before training.**")
    base = gr.skip()
    if guess.label and guess.label in header:
        index = header.index(guess.label)
        labels = sorted({r[index].strip() for r in rows if index < len(r) and r[index].strip()})
        suggestion = app.suggest_base(labels)
        if suggestion:
            lines.append(f"- start from: `{suggestion}`, which already answers {_overlap(app, suggestion, labels)}")
        else:
            lines.append("- start from: a new model (no shipped checkpoint knows these labels)")
        base = gr.update(value=suggestion or NEW_MODEL)
    return "\n".join(lines), base


def _overlap(app: App, name: str, labels: list[str]) -> str:
    known, _, _ = app.capabilities(name)
    shared = sorted(set(labels) & set(known))
    return f"{len(shared)} of your {len(labels)} labels"


def overrides_of(epochs=None, lr=None, batch_size=None, freeze=None, class_weights=None) -> dict:
    """The settings a caller set, checked; a value left out (None) is the recipe's choice, as a
    CLI flag not given."""
    overrides: dict = {}
    if epochs is not None:
        overrides["epochs"] = int(epochs)
    if lr is not None:
        overrides["lr"] = float(lr)
        if not 0 < overrides["lr"] <= 1:
            raise ValueError(f"the learning rate must be in (0, 1], got {lr}")
    if batch_size is not None:
        overrides["batch_size"] = int(batch_size)
        if overrides["batch_size"] < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if freeze is not None:
        overrides["freeze"] = [str(f) for f in freeze]
        bad = [f for f in overrides["freeze"] if f not in ("image_encoder", "text_encoder")]
        if bad:
            raise ValueError(f"unknown part(s) to freeze {bad}; use image_encoder, text_encoder")
    if class_weights is not None:
        overrides["class_weights"] = bool(class_weights)
    return overrides


def budget_s(app: App, minutes) -> float:
    """The time budget in seconds (None: the recipe's default within the server's limit)."""
    return app.jobs.time_limit_s(None if minutes in (None, "") else float(minutes))


def preflight(
    app: App,
    csv_file,
    zip_file,
    image_col,
    text_col,
    label_col,
    base=None,
    overrides: dict | None = None,
    time_budget_minutes=None,
    owner: str | None = None,
) -> str:
    """Handler of /preflight: the report and the recipe's plan (or a hint when the images were not
    uploaded), or a refusal naming what is wrong; the upload folder is removed either way."""
    try:
        report = app.preflight(
            csv_file,
            zip_file,
            (image_col, text_col, label_col),
            None if base in (None, "", NEW_MODEL) else str(base),
            overrides,
            budget_s(app, time_budget_minutes),
            owner,
        )
    except ValueError as e:
        raise refuse(str(e)) from None
    except Exception as e:  # noqa: BLE001 - the server keeps serving
        raise unexpected("checking the data", e) from None
    return code_block(report)  # it quotes the CSV (header, paths, labels): shown as text, never as Markdown


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
    class_weights=None,
    time_budget_minutes=None,
):
    """Handler of /start_finetune: validates everything, queues the job of ``owner``; settings
    given as None are the recipe's choice."""
    try:
        name = validate_name(name)
        overrides = overrides_of(epochs, lr, batch_size, freeze, class_weights)
        if finetune_device():  # the CPU on ZeroGPU (ui/zerogpu.py)
            overrides["device"] = finetune_device()
        if not 0 < float(val_split) < 1:
            raise ValueError(f"the validation split must be between 0 and 1, got {val_split}")
        return app.start_job(
            owner,
            csv_file,
            zip_file,
            (image_col, text_col, label_col),
            overrides,
            name,
            None if base in (None, "", NEW_MODEL) else str(base),
            bool(overwrite),
            float(val_split),
            budget_s(app, time_budget_minutes),
        )
    except (ValueError, TypeError) as e:
        raise refuse(str(e)) from None
    except Exception as e:  # noqa: BLE001 - the server keeps serving
        raise unexpected("starting the fine-tune", e) from None


def resume_finetune(app: App, owner: str | None, job: str | None = None, time_budget_minutes=None) -> dict:
    """Handler of /resume_finetune: continues the visitor's own stopped, interrupted or
    time-limited job from its last saved epoch."""
    if owner is None:
        raise refuse("no owner token: pass the owner_token /start_finetune returned")
    try:
        return app.resume_job(owner, (job or "").strip() or None, budget_s(app, time_budget_minutes))
    except ValueError as e:
        raise refuse(str(e)) from None


def finetune_status(app: App, owner: str | None) -> dict:
    """Handler of /finetune_status: the visitor's own latest job."""
    return app.jobs.status(owner or "")


def stop_finetune(app: App, owner: str | None) -> dict:
    """Handler of /stop_finetune: stops the visitor's own job, at any phase."""
    if owner is None:
        raise refuse("no owner token: pass the owner_token /start_finetune returned")
    return app.jobs.stop(owner)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def status_text(status: dict) -> str:
    """One line for a job status: state, phase message, elapsed time, and the time left once
    training steps have run (extrapolated from the progress so far)."""
    pct = int(round(100 * status["progress"]))
    state = status["state"]
    if state == "idle":
        return html.escape(status["message"], quote=False)
    message = html.escape(status["message"], quote=False)  # may quote the user's data
    line = f"**{state}** ({pct}%, {_clock(status['elapsed_s'])} elapsed) - {message}"
    if status.get("estimate_s") and state in ("queued", "preparing", "running"):
        line += (
            f" - estimated {format_seconds(status['estimate_s'])} on this machine"
            f" (time budget {format_seconds(status['time_limit_s'])})"
        )
    if status.get("resumable"):
        line += " - press Resume to continue it from its last saved epoch"
    if state == "running":
        if 0.02 <= status["progress"] < 1:
            left = status["elapsed_s"] * (1 - status["progress"]) / status["progress"]
            line += f" - about {_clock(left)} left"
        elif status["progress"] == 0:
            line += " - preparing the data (loading and encoding the images) before the first training step"
    return line


def plan_text(status: dict) -> str:
    """The job's training plan (what the recipe chose and why, the estimate), as planned at its
    start; empty before any job."""
    if not status.get("plan"):
        return ""
    return "Training plan of this job:\n```\n" + status["plan"] + "\n```"


def status_views(app: App, status: dict):
    """Component values for a job status: text, bar, curves, confusion, reliability diagram
    (validation, before and after the fitted temperature), per-class table, the Resume button
    (shown when the job can resume), the plan."""
    pct = int(round(100 * status["progress"]))
    bar = (
        f"<div style='border:1px solid #999;border-radius:4px;height:18px;width:100%'>"
        f"<div id='ft-bar' style='background:#4c8bf5;height:100%;width:{pct}%'></div></div>"
    )
    curves = render.training_curves(status["history"]) if status["history"] else None
    report = status.get("report") or {}
    confusion = render.confusion_figure(report["confusion"]) if report.get("confusion") else None
    reliability = render.reliability_figure(report["calibration"]) if report.get("calibration") else None
    table = (
        [
            [label, round(v["precision"], 3), round(v["recall"], 3), round(v["f1"], 3), v["support"]]
            for label, v in report["per_class"].items()
        ]
        if report.get("per_class")
        else []
    )
    resume = gr.update(visible=bool(status.get("resumable")))
    return status_text(status), bar, curves, confusion, reliability, table, resume, plan_text(status)


SETTINGS = (
    "csv_file",
    "zip_file",
    "image_col",
    "text_col",
    "label_col",
    "base",
    "epochs",
    "lr",
    "batch_size",
    "freeze",
    "val_split",
    "name",
    "overwrite",
    "class_weights",
    "time_budget",
    "automatic",
)


def finetune_tab(
    app: App,
    checkpoint: gr.Dropdown,
    owner_token: gr.BrowserState,
    tabs: gr.Tabs,
    saved: gr.BrowserState,
    saved_tab: gr.BrowserState,
):
    """The tab's components and events; ``owner_token``: the visitor's owner token
    (ui/identity.py); ``saved`` and ``saved_tab`` keep the form and the open tab in the browser
    (created outside the tabs: a hidden tab's components load nothing).
    Returns (poll, its inputs, its outputs) and (restore, its inputs, its outputs) for page load."""
    names = app.registry.names()
    limit_min = app.limits.job_time_limit_min
    default_minutes = round(app.jobs.time_limit_s(None) / 60, 1)
    with gr.Tab("Fine-tune", id="finetune") as tab:
        gr.Markdown(
            "Upload a CSV with an image column (paths relative to the zip's root), a text column and a label column, "
            "plus a zip of the images; or use the example dataset. The columns are guessed from their content: "
            "check them, check the data (it shows what the automatic settings will be and how long training will"
            " take on this machine), then train. Your settings are kept in this browser across reloads."
        )
        with gr.Row():
            csv_file = gr.File(label="CSV", file_types=[".csv"], type="filepath", elem_id="csv-upload")
            zip_file = gr.File(label="Images (zip)", file_types=[".zip"], type="filepath", elem_id="zip-upload")
        example_button = gr.Button("Use example dataset", elem_id="example-dataset")
        with gr.Row():
            image_col = api_type(
                gr.Dropdown([], label="Image column", allow_custom_value=True, elem_id="image-column"), OPTIONAL_STRING
            )
            text_col = api_type(
                gr.Dropdown([], label="Text column", allow_custom_value=True, elem_id="text-column"), OPTIONAL_STRING
            )
            label_col = api_type(
                gr.Dropdown([], label="Label column", allow_custom_value=True, elem_id="label-column"), OPTIONAL_STRING
            )
        columns_note = gr.Markdown(label="Column roles", elem_id="columns-note")
        check = gr.Button("Check data")
        report = gr.Markdown(label="Pre-flight report", elem_id="preflight")
        with gr.Row():
            base = api_type(
                gr.Dropdown(
                    [NEW_MODEL, *names],
                    value=NEW_MODEL,
                    label="Start from",
                    allow_custom_value=True,
                    elem_id="start-from",
                    info="a checkpoint that already knows your labels learns faster",
                ),
                {"type": "string", "additional_description": f"'{NEW_MODEL}' or a checkpoint name"},
            )
            time_budget = gr.Number(
                default_minutes,
                label="Time budget (minutes)",
                minimum=1,
                maximum=limit_min,
                elem_id="time-budget",
                info=f"training stops here, keeping its best epoch (at most {limit_min})",
            )
            val_split = gr.Slider(0.05, 0.5, value=0.1, step=0.05, label="Validation split (of the images)")
            name = gr.Textbox("my-model", label="New checkpoint name", elem_id="checkpoint-name")
            overwrite = gr.Checkbox(False, label="Overwrite if it exists")
        automatic = gr.Checkbox(
            True,
            label="Automatic settings (recommended)",
            info="epochs, image size, learning rate, what to freeze and class weights are chosen from your data"
            " and the time budget ('Check data' shows them); editing a custom setting below turns this off",
            elem_id="auto-settings",
        )
        with gr.Accordion("Custom settings (used when Automatic is off)", open=False, elem_id="custom-settings"):
            with gr.Row():
                epochs = gr.Number(5, label="Epochs", precision=0, minimum=1, maximum=200, elem_id="epochs")
                lr = gr.Number(3e-4, label="Learning rate", minimum=1e-6, maximum=1e-1)
                batch_size = gr.Number(64, label="Batch size", precision=0, minimum=1, maximum=1024)
            with gr.Row():
                freeze = gr.CheckboxGroup(
                    ["image_encoder", "text_encoder"], value=["image_encoder", "text_encoder"], label="Freeze"
                )
                class_weights = gr.Checkbox(
                    False,
                    label="Class weights",
                    info="weigh rare classes up (for imbalanced data)",
                    elem_id="class-weights",
                )
        # the API's values: left out (None), a setting is the recipe's choice (as a CLI flag not given)
        api_epochs = gr.Number(None, precision=0, visible=False)
        api_lr = gr.Number(None, visible=False)
        api_batch_size = gr.Number(None, precision=0, visible=False)
        api_freeze = api_type(
            gr.JSON(None, visible=False),
            {"type": "array", "items": {"type": "string"}, "additional_description": "image_encoder, text_encoder"},
        )
        # (a Checkbox cannot hold None: its initial value would be False, an explicit choice)
        api_class_weights = api_type(gr.JSON(None, visible=False), {"type": "boolean"})
        api_time_budget = gr.Number(None, visible=False)
        api_job = api_type(gr.Textbox(None, visible=False), OPTIONAL_STRING)
        with gr.Row():
            start = gr.Button("Start", variant="primary", elem_id="start-button")
            stop = gr.Button("Stop", variant="stop")
            resume = gr.Button(
                "Resume (from the last saved epoch, for the time budget above)",
                visible=False,
                elem_id="resume-button",
            )
        status_md = gr.Markdown(label="Job status", elem_id="job-status")
        status_bar = gr.HTML()
        job_plan = gr.Markdown(elem_id="job-plan")
        curves = gr.Plot(label="Training curves (loss and accuracy per epoch)", elem_id="curves")
        with gr.Row():
            confusion = gr.Plot(label="Confusion matrix (validation)", min_width=300)
            reliability = gr.Plot(
                label="Calibration (validation, before and after the fitted temperature)",
                min_width=300,
                elem_id="reliability",
            )
            per_class = gr.Dataframe(
                headers=["label", "precision", "recall", "f1", "support"],
                label="Per class",
                interactive=False,
                min_width=300,
                elem_id="per-class",
            )
        with gr.Row():
            # any name reaches on_download, which refuses one the visitor cannot use in its own words
            # (Gradio's choice check would answer "not in the list of choices" with a traceback)
            download_name = api_type(
                gr.Dropdown(
                    names,
                    label="Checkpoint to download",
                    elem_id="download-name",
                    min_width=200,
                    allow_custom_value=True,
                ),
                OPTIONAL_STRING,
            )
            download = gr.Button("Zip it", min_width=100)
            download_file = gr.File(label="Download", interactive=False, min_width=200)
        job = gr.JSON(visible=False, label="job status")
        status_outputs = [status_md, status_bar, curves, confusion, reliability, per_class, resume, job_plan]

        def guess_roles(csv_file: str | None):
            return (*csv_columns(csv_file), *column_report(app, csv_file))

        role_outputs = [image_col, text_col, label_col, columns_note, base]
        csv_file.upload(guess_roles, csv_file, role_outputs, api_visibility="private")

        def use_example_dataset():
            csv_path, archive = app.example_dataset()
            return (csv_path, archive, *guess_roles(csv_path))

        example_button.click(use_example_dataset, None, [csv_file, zip_file, *role_outputs], api_visibility="private")

        def check_data(
            csv_file: str,
            zip_file: str | None = None,
            image_column: str | None = None,
            text_column: str | None = None,
            label_column: str | None = None,
            start_from: str = NEW_MODEL,
            epochs: int | None = None,
            learning_rate: float | None = None,
            batch_size: int | None = None,
            freeze: list[str] | None = None,
            class_weights: bool | None = None,
            time_budget_minutes: float | None = None,
            owner_token: str | None = None,
            profile: gr.OAuthProfile | None = None,
        ) -> str:
            """Pre-flight report of a training CSV (and the zip of its images): rows accepted and
            rejected with the reason, class counts, warnings; then the training plan: each setting
            the recipe chose from the data and the time budget (values you give win), why, and the
            estimated time on this machine. Nothing is trained."""
            try:
                overrides = overrides_of(epochs, learning_rate, batch_size, freeze, class_weights)
            except (ValueError, TypeError) as e:
                raise refuse(str(e)) from None
            owner = owner_of(app, owner_token, profile)
            return preflight(
                app, csv_file, zip_file, image_column, text_column, label_column, start_from, overrides,
                time_budget_minutes, owner,
            )  # fmt: skip

        def check_form(
            csv_file, zip_file, image_column, text_column, label_column, start_from, time_budget_minutes, automatic,
            epochs, learning_rate, batch_size, freeze, class_weights, owner_token=None,
            profile: gr.OAuthProfile | None = None,
        ) -> str:  # fmt: skip
            if automatic:  # the recipe chooses every setting
                epochs = learning_rate = batch_size = freeze = class_weights = None
            return check_data(
                csv_file, zip_file, image_column, text_column, label_column, start_from, epochs, learning_rate,
                batch_size, freeze, class_weights, time_budget_minutes, owner_token, profile,
            )  # fmt: skip

        columns_in = [csv_file, zip_file, image_col, text_col, label_col]
        custom = [epochs, lr, batch_size, freeze, class_weights]
        check.click(
            check_form,
            [*columns_in, base, time_budget, automatic, *custom, owner_token],
            report,
            api_visibility="private",
        )
        gr.Button("preflight", visible=False).click(
            check_data,
            [*columns_in, base, api_epochs, api_lr, api_batch_size, api_freeze, api_class_weights, api_time_budget,
             owner_token],
            report,
            api_name="preflight",
        )  # fmt: skip
        for field in custom:  # a custom value the user edits is theirs: Automatic goes off
            field.input(lambda: False, None, automatic, api_visibility="private", queue=False)

        def start_fine_tune(
            csv_file: str,
            zip_file: str | None = None,
            image_column: str | None = None,
            text_column: str | None = None,
            label_column: str | None = None,
            start_from: str = NEW_MODEL,
            epochs: int | None = None,
            learning_rate: float | None = None,
            batch_size: int | None = None,
            freeze: list[str] | None = None,
            validation_split: float = 0.1,
            name: str = "my-model",
            overwrite: bool = False,
            class_weights: bool | None = None,
            owner_token: str | None = None,
            time_budget_minutes: float | None = None,
            profile: gr.OAuthProfile | None = None,
        ):
            """Queue a fine-tune job (one runs at a time, in its own process) and return its
            status; poll /finetune_status for progress, the plan and its time estimate, the history
            and the final report. Settings left out (None) are chosen by the recipe from the data
            and the time budget (minutes; default 10, at most the server's job time limit), as the
            CLI's `train` does for flags not given. A caller without an owner token gets one back
            as ``owner_token``: pass it to later calls to see, stop, resume, use or download what
            it trains."""
            owner = owner_of(app, owner_token, profile)
            new_token = None
            if owner is None:
                new_token = app.new_token()
                owner = app.owner(new_token)
            status = start_finetune(
                app,
                csv_file,
                zip_file,
                image_column,
                text_column,
                label_column,
                start_from,
                epochs,
                learning_rate,
                batch_size,
                freeze,
                validation_split,
                name,
                overwrite,
                owner,
                class_weights,
                time_budget_minutes,
            )
            if new_token:
                status = {**status, "owner_token": new_token}
            return status

        def start_form(
            csv_file, zip_file, image_column, text_column, label_column, start_from, epochs, learning_rate,
            batch_size, freeze, validation_split, name, overwrite, class_weights, owner_token,
            time_budget_minutes, automatic, profile: gr.OAuthProfile | None = None,
        ):  # fmt: skip
            if automatic:  # the recipe chooses every setting
                epochs = learning_rate = batch_size = freeze = class_weights = None
            status = start_fine_tune(
                csv_file, zip_file, image_column, text_column, label_column, start_from, epochs, learning_rate,
                batch_size, freeze, validation_split, name, overwrite, class_weights, owner_token,
                time_budget_minutes, profile,
            )  # fmt: skip
            # a page whose token had not arrived yet keeps the one made for this job
            return status, status.get("owner_token") or owner_token

        start.click(
            start_form,
            [*columns_in, base, epochs, lr, batch_size, freeze, val_split, name, overwrite, class_weights,
             owner_token, time_budget, automatic],
            [job, owner_token],
            api_visibility="private",
            concurrency_limit=1,
            concurrency_id="train",
        ).then(lambda s: status_views(app, s), job, status_outputs, api_visibility="private")  # fmt: skip
        gr.Button("start", visible=False).click(
            start_fine_tune,
            [*columns_in, base, api_epochs, api_lr, api_batch_size, api_freeze, val_split, name, overwrite,
             api_class_weights, owner_token, api_time_budget],
            job,
            api_name="start_finetune",
            concurrency_limit=1,
            concurrency_id="train",
        )  # fmt: skip

        def resume_fine_tune(
            job: str | None = None,
            time_budget_minutes: float | None = None,
            owner_token: str | None = None,
            profile: gr.OAuthProfile | None = None,
        ) -> dict:
            """Resume your fine-tune job that was stopped, interrupted (the server restarted) or cut
            by its time limit: it continues from its last saved epoch, for ``time_budget_minutes``
            more (default 10). ``job``: its id or checkpoint name (default: your latest job)."""
            return resume_finetune(app, owner_of(app, owner_token, profile), job, time_budget_minutes)

        resume.click(
            resume_fine_tune,
            [api_job, time_budget, owner_token],
            job,
            api_name="resume_finetune",
            concurrency_limit=1,
            concurrency_id="train",
        ).then(lambda s: status_views(app, s), job, status_outputs, api_visibility="private")

        def stop_fine_tune(owner_token: str | None = None, profile: gr.OAuthProfile | None = None) -> dict:
            """Stop your fine-tune job, at any phase; the best epoch saved so far is kept."""
            return stop_finetune(app, owner_of(app, owner_token, profile))

        def fine_tune_status(owner_token: str | None = None, profile: gr.OAuthProfile | None = None) -> dict:
            """Your latest fine-tune job's status: state (queued with its position, preparing, running, done,
            failed, stopped, interrupted), message, progress, epoch, history, report, checkpoint."""
            return finetune_status(app, owner_of(app, owner_token, profile))

        def delete_checkpoint(
            name: str,
            owner_token: str | None = None,
            profile: gr.OAuthProfile | None = None,
        ) -> list[str]:
            """Delete one of your own checkpoints; returns the checkpoints you can use."""
            owner = owner_of(app, owner_token, profile)
            try:
                if owner is None:
                    raise ValueError("no owner token: pass the owner_token /start_finetune returned")
                app.registry.delete(str(name or ""), owner)
            except ValueError as e:
                raise refuse(str(e)) from None
            return app.registry.names(owner)

        stop.click(stop_fine_tune, [owner_token], job, api_name="stop_finetune")
        gr.Button("status", visible=False).click(fine_tune_status, [owner_token], job, api_name="finetune_status")
        deleted = gr.JSON(visible=False, label="your checkpoints")
        gr.Button("delete", visible=False).click(
            delete_checkpoint, [name, owner_token], deleted, api_name="delete_checkpoint"
        )

        # settings survive a reload: saved in the browser on every change, restored on load
        settings = [csv_file, zip_file, image_col, text_col, label_col, base, epochs, lr, batch_size]
        settings += [freeze, val_split, name, overwrite, class_weights, time_budget, automatic]  # as SETTINGS

        def save(*values):
            return dict(zip(SETTINGS, values))

        for field in settings:
            field.change(save, settings, saved, api_visibility="private", queue=False, show_progress="hidden")

        def restore(
            values: dict | None,
            tab_id: str | None,
            owner_token=None,
            profile: gr.OAuthProfile | None = None,
        ):
            values = values or {}
            updates = []
            header = []
            csv_path = values.get("csv_file")
            if csv_path and Path(csv_path).is_file():
                header, _ = _read_head(csv_path)
            for key in SETTINGS:
                value = values.get(key)
                if key in ("csv_file", "zip_file"):
                    updates.append(value if value and Path(value).is_file() else gr.skip())
                elif key in ("image_col", "text_col", "label_col"):
                    updates.append(gr.update(choices=header, value=value) if value else gr.skip())
                else:
                    updates.append(value if value is not None else gr.skip())
            # a reload mid-training (or after leaving this tab open) comes back to this tab
            owner = owner_of(app, owner_token, profile)
            back = (owner is not None and app.jobs.running(owner)) or tab_id == "finetune"
            return (*updates, gr.update(selected="finetune") if back else gr.skip())

        tab.select(lambda: "finetune", None, saved_tab, api_visibility="private", queue=False)

        known_names = gr.State(None, time_to_live=app.limits.session_ttl_min * 60)

        def poll(known, owner_token=None, profile: gr.OAuthProfile | None = None):
            """The visitor's job status; checkpoint lists only when they changed (a list
            refreshed every second would close a dropdown the user has open). When a job has
            saved its checkpoint, the download list offers it."""
            owner = owner_of(app, owner_token, profile)
            names = app.registry.names(owner)
            status = finetune_status(app, owner)
            finished = status["checkpoint"] if status["state"] in ("done", "stopped") else None
            seen = [names, finished]
            if seen == known:
                lists = [gr.skip()] * 3
            else:
                lists = [
                    gr.update(choices=names),
                    gr.update(choices=[NEW_MODEL, *names]),
                    gr.update(choices=names, value=finished) if finished in names else gr.update(choices=names),
                ]
            return (*status_views(app, status), *lists, seen)

        poll_inputs = [known_names, owner_token]
        poll_outputs = [*status_outputs, checkpoint, base, download_name, known_names]
        timer = gr.Timer(1.0)
        timer.tick(poll, poll_inputs, poll_outputs, api_visibility="private", queue=False, show_progress="hidden")

        def on_download(name, owner_token=None, profile: gr.OAuthProfile | None = None):
            if not name:
                raise refuse("Pick a checkpoint to download.")
            try:
                return app.download(str(name), owner_of(app, owner_token, profile))
            except ValueError as e:
                raise refuse(str(e)) from None

        download.click(on_download, [download_name, owner_token], download_file, api_visibility="private")
    restore_inputs = [saved, saved_tab, owner_token]
    return poll, poll_inputs, poll_outputs, (restore, restore_inputs, [*settings, tabs])
