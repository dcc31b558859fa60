"""The Fine-tune tab: CSV + zip (or the example dataset) -> column roles guessed from the
content, pre-flight report with the recipe's plan and time estimate, a time budget, settings
(automatic by default; kept in the browser across reloads), a background job with a message for
each phase and live curves, then the report and a new checkpoint; Resume for a job that was
stopped, interrupted or cut by its time limit.

Settings are the CLI's: the recipe (mmdemo/training/recipe.py) chooses every value the user did not set.
In the tab, "Automatic settings" leaves all of them to it; a custom value the user edits turns
it off, and then only the values the user edited are sent: the other custom fields show the
recipe's choices (Check data fills them in) and stay the recipe's, so one custom setting does
not override every automatic choice. Through the API a value left out (None) is the recipe's.

``FinetuneTab`` holds the handlers: the page's (``*_form``, the poll, the form kept in the
browser) and what the page and the API share (``preflight``, ``start_for``, ``resume``,
``stop``, ``status``, ``delete``), each calling the service layer (``App``, its ``JobManager``).
``finetune_tab`` lays out the components and wires them to those methods; the named endpoints
(/preflight, /start_finetune, ...) are declared in ui/api.py.
"""

from __future__ import annotations

import ast
import csv
import html
import re
from pathlib import Path
from typing import NamedTuple

import gradio as gr

from ..app.backend import App
from ..app.registry import TOKEN_PATTERN, validate_name
from ..datasets.csv_table import guess_columns, sniff_separator
from ..explain import render
from ..training.recipe import format_seconds
from .common import code_block, input_error, markdown_text
from .identity import owner_of, refuse, unexpected
from .review import review_section
from .zerogpu import finetune_device

NEW_MODEL = "(new model)"
DEFAULT_NAME = "my-model"  # the new checkpoint's name the form (and the API) starts with
VALIDATION_SPLIT = (0.05, 0.5)  # the bounds of the validation split (of the images)
PREVIEW_ROWS = 200  # rows read to guess the column roles
CUSTOM = ("epochs", "lr", "batch_size", "freeze", "class_weights")  # the custom settings, in overrides_of's order
# a plan line of a custom setting: "name = value  (why)" (Recipe.describe)
PLAN_LINE = re.compile(r"^(epochs|lr|batch_size|freeze|class_weights) = (.+?)  \(", re.MULTILINE)


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
    # several text columns are joined in the order picked; each ticked label column is one task
    return [
        gr.update(choices=header, value=guess.image),
        gr.update(choices=header, value=[guess.text] if guess.text else []),
        gr.update(choices=header, value=[guess.label] if guess.label else []),
    ]


def several(value) -> list[str]:
    """The columns a multi-column field holds (a list; a single name from an older form or the API)."""
    if not value:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


NOTHING_TO_STOP = "No fine-tune job of yours is running: there is nothing to stop."
NOTHING_TO_RESUME = "You have no stopped fine-tune job to resume: start one with Start."
NO_GROUP = "(none)"  # the group column's choice for "no group column": rows are grouped by image


def group_choices(csv_file):
    """The group column dropdown for a new CSV: no group column, or one of its columns."""
    if not csv_file:
        return gr.update(choices=[NO_GROUP], value=NO_GROUP)
    header, _ = _read_head(csv_file)
    return gr.update(choices=[NO_GROUP, *header], value=NO_GROUP)


def group_of(value) -> str | None:
    """The group column a form value names (None: no group column)."""
    value = (value or "").strip() if isinstance(value, str) else ""
    return None if value in ("", NO_GROUP) else value


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


def custom_values(automatic, edited, epochs, lr, batch_size, freeze, class_weights) -> tuple:
    """The custom settings the page sends, in CUSTOM's order: none with Automatic on, otherwise
    only those the user edited (``edited``, names of CUSTOM); None (the recipe's) for the rest."""
    mine = set() if automatic else set(edited or ())
    values = (epochs, lr, batch_size, freeze, class_weights)
    return tuple(value if name in mine else None for name, value in zip(CUSTOM, values))


def plan_values(report: str) -> dict:
    """The recipe's custom settings in a pre-flight report's plan (which comes last), by name;
    empty when the report has no plan (a hint, such as a missing zip)."""
    _, heading, plan = report.rpartition("\nTraining plan (")
    values = {}
    for name, text in PLAN_LINE.findall(plan if heading else ""):
        try:
            values[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            continue
    return values


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _elapsed_words(status: dict) -> str:
    """Elapsed time on the job's one clock (every segment, resumes included), and where it went."""
    parts = [
        f"{_clock(status[key])} {name}"
        for key, name in (("waiting_s", "waiting"), ("preparing_s", "preparing"), ("running_s", "training"))
        if status.get(key, 0) >= 0.5
    ]
    return f"{_clock(status['elapsed_s'])} elapsed" + (f": {', '.join(parts)}" if len(parts) > 1 else "")


def status_text(status: dict) -> str:
    """One line for a job status: state, phase message, elapsed time, and the time left: measured
    from this run's training rate once it has one (``left_s``), the plan's estimate before."""
    pct = int(round(100 * status["progress"]))
    state = status["state"]
    if state == "idle":
        return html.escape(status["message"], quote=False)
    message = html.escape(status["message"], quote=False)  # may quote the user's data
    line = f"**{state}** ({pct}%, {_elapsed_words(status)}) - {message}"
    left = status.get("left_s")
    if status.get("estimate_s") and state in ("queued", "preparing", "running") and left is None:
        startup = status.get("startup_s") or 0.0  # the plan's estimate leaves out the worker's start-up
        line += (
            f" - estimated {format_seconds(status['estimate_s'] + startup)} on this machine"
            f"{f', {_clock(startup)} of it starting the worker' if startup >= 0.5 else ''}"
            f" (time budget {format_seconds(status['time_limit_s'])})"
        )
    if status.get("resumable"):
        line += " - press Resume to continue it from its last saved epoch"
    comparison = status.get("start_comparison")
    if comparison and state in ("done", "stopped"):
        words = markdown_text(comparison["summary"])  # names checkpoints: text, not Markdown
        line += f"\n\n**⚠ {words}**" if comparison["worse"] else f"\n\n{words}"
    if state == "running":
        if left is not None and status["progress"] < 1:
            line += f" - about {_clock(left)} left"
        elif status["progress"] == 0 and status.get("kind") != "audit":
            line += " - preparing the data (loading and encoding the images) before the first training step"
    return line


def plan_text(status: dict) -> str:
    """The job's training plan (what the recipe chose and why, the estimate), as planned at its
    start; empty before any job."""
    if not status.get("plan") or status.get("kind") == "audit":  # an audit says what it does in its status
        return ""
    return "Training plan of this job:\n```\n" + status["plan"] + "\n```"


def status_views(status: dict):
    """Component values for a job status: text, bar, curves, confusion, reliability diagram
    (validation, before and after the fitted temperature), per-class table, the Resume button
    (shown when the job can resume), the plan."""
    pct = int(round(100 * status["progress"]))
    bar = (
        f"<div style='border:1px solid #999;border-radius:4px;height:18px;width:100%'>"
        f"<div id='ft-bar' style='background:#4c8bf5;height:100%;width:{pct}%'></div></div>"
    )
    # complete epochs only: an epoch cut short by a stop is trained again by a Resume, which
    # continues after the last complete one (the status line names the cut one)
    history = [h for h in status["history"] if h.get("complete") is not False]
    curves = render.training_curves(history) if history else None
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
    tasks = report.get("tasks") or {}
    if len(tasks) > 1:  # a model of several tasks: every task's classes, "task: label"
        table = [
            [f"{task}: {label}", round(v["precision"], 3), round(v["recall"], 3), round(v["f1"], 3), v["support"]]
            for task, t in tasks.items()
            for label, v in t.get("metrics", {}).get("report", {}).get("per_class", {}).items()
        ]
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
    "edited",
    "group_col",
)


class FinetuneTab:
    """The tab's handlers, bound to the app."""

    def __init__(self, app: App):
        self.app = app

    def owner(self, token, profile=None) -> str | None:
        """Whose jobs and checkpoints these are (App.owner, from the owner token); None without one."""
        return owner_of(self.app, token, profile)

    def budget_s(self, minutes) -> float:
        """The time budget in seconds (None: the recipe's default within the server's limit)."""
        return self.app.jobs.time_limit_s(None if minutes in (None, "") else float(minutes))

    def default_minutes(self) -> float:
        """The time budget a job gets when none is given, in minutes (what the form starts with)."""
        return round(self.app.jobs.time_limit_s(None) / 60, 1)

    # -- the data: column roles, the example dataset, Check data -----------------------------
    def column_report(self, csv_file) -> tuple[str, object]:
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
            suggestion = self.app.suggest_base(labels)
            if suggestion:
                lines.append(f"- start from: `{suggestion}`, which already answers {self._overlap(suggestion, labels)}")
            else:
                lines.append("- start from: a new model (no shipped checkpoint knows these labels)")
            base = gr.update(value=suggestion or NEW_MODEL)
        return "\n".join(lines), base

    def _overlap(self, name: str, labels: list[str]) -> str:
        known, _, _ = self.app.capabilities(name)
        shared = sorted(set(labels) & set(known))
        return f"{len(shared)} of your {len(labels)} labels"

    def guess_roles(self, csv_file: str | None):
        """The column dropdowns, the note on why, and 'Start from' for a new CSV."""
        return (*csv_columns(csv_file), *self.column_report(csv_file))

    def use_example_dataset(self):
        """The example dataset's CSV and zip, with its column roles."""
        csv_path, archive = self.app.example_dataset()
        return (csv_path, archive, *self.guess_roles(csv_path))

    def preflight(
        self,
        csv_file,
        zip_file,
        image_column,
        text_column,
        label_column,
        start_from=None,
        epochs=None,
        learning_rate=None,
        batch_size=None,
        freeze=None,
        class_weights=None,
        time_budget_minutes=None,
        owner: str | None = None,
        group_column=None,
    ) -> str:
        """The pre-flight report and the recipe's plan (or a hint when the images were not
        uploaded), or a refusal naming what is wrong; the upload folder is removed either way."""
        report = self._report(
            csv_file, zip_file, image_column, text_column, label_column, start_from, epochs, learning_rate,
            batch_size, freeze, class_weights, time_budget_minutes, owner, group_column,
        )  # fmt: skip
        return code_block(report)  # it quotes the CSV (header, paths, labels): shown as text, never as Markdown

    def _report(
        self, csv_file, zip_file, image_column, text_column, label_column, start_from, epochs, learning_rate,
        batch_size, freeze, class_weights, time_budget_minutes, owner, group_column=None,
    ) -> str:  # fmt: skip
        try:
            overrides = overrides_of(epochs, learning_rate, batch_size, freeze, class_weights)
        except (ValueError, TypeError) as e:
            raise refuse(str(e)) from None
        try:
            report = self.app.preflight(
                csv_file,
                zip_file,
                (image_column, text_column, label_column, group_of(group_column)),
                None if start_from in (None, "", NEW_MODEL) else str(start_from),
                overrides,
                self.budget_s(time_budget_minutes),
                owner,
            )
        except ValueError as e:
            raise refuse(str(e)) from None
        except Exception as e:  # noqa: BLE001 - the server keeps serving
            raise unexpected("checking the data", e) from None
        return report

    def check_form(
        self, csv_file, zip_file, image_column, text_column, label_column, start_from, time_budget_minutes, automatic,
        epochs, learning_rate, batch_size, freeze, class_weights, edited=None, owner_token=None, group_column=None,
        profile: gr.OAuthProfile | None = None,
    ) -> tuple:  # fmt: skip
        """Check data: the report, then the custom fields the user did not edit, filled with the
        recipe's choices from its plan. With Automatic on the recipe chooses every setting;
        with it off, the edited ones are the user's."""
        custom = custom_values(automatic, edited, epochs, learning_rate, batch_size, freeze, class_weights)
        report = self._report(
            csv_file, zip_file, image_column, text_column, label_column, start_from, *custom, time_budget_minutes,
            self.owner(owner_token, profile), group_column,
        )  # fmt: skip
        chosen = plan_values(report)
        mine = set(edited or ())
        fills = [gr.update(value=chosen[n]) if n in chosen and n not in mine else gr.skip() for n in CUSTOM]
        return (code_block(report), *fills)  # it quotes the CSV: shown as text, never as Markdown

    @staticmethod
    def automatic_off(name: str):
        """The handler of an edit of the custom field ``name``: the value is the user's, so
        Automatic goes off and ``name`` joins the settings sent (``edited``)."""

        def edit(edited):
            return False, sorted({*(edited or ()), name})

        return edit

    # -- a job: start, resume, stop, its status --------------------------------------------
    def start(
        self,
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
        group_col=None,
        reviewed: bool = False,
    ) -> dict:
        """Validates everything and queues the job of ``owner``; settings given as None are the
        recipe's choice. ``reviewed``: train with the owner's review of their audit applied."""
        try:
            name = validate_name(name)
            overrides = overrides_of(epochs, lr, batch_size, freeze, class_weights)
            if finetune_device():  # the CPU on ZeroGPU (ui/zerogpu.py)
                overrides["device"] = finetune_device()
            if not 0 < float(val_split) < 1:
                raise ValueError(f"the validation split must be between 0 and 1, got {val_split}")
            start = self.app.start_reviewed_job if reviewed else self.app.start_job
            return start(
                owner,
                csv_file,
                zip_file,
                (image_col, text_col, label_col, group_of(group_col)),
                overrides,
                name,
                None if base in (None, "", NEW_MODEL) else str(base),
                bool(overwrite),
                float(val_split),
                self.budget_s(time_budget_minutes),
            )
        except (ValueError, TypeError) as e:
            raise refuse(str(e)) from None
        except Exception as e:  # noqa: BLE001 - the server keeps serving
            raise unexpected("starting the fine-tune", e) from None

    def start_for(self, owner_token, profile, **settings) -> dict:
        """``start`` for the request's owner. A request without one gets a new owner token, which
        owns the job and comes back in the status as ``owner_token``."""
        owner = self.owner(owner_token, profile)
        new_token = None
        if owner is None:
            new_token = self.app.new_token()
            owner = self.app.owner(new_token)
        status = self.start(**settings, owner=owner)
        return {**status, "owner_token": new_token} if new_token else status

    def start_form(
        self, csv_file, zip_file, image_column, text_column, label_column, start_from, epochs, learning_rate,
        batch_size, freeze, validation_split, name, overwrite, class_weights, owner_token, time_budget_minutes,
        automatic, edited=None, group_column=None, profile: gr.OAuthProfile | None = None,
    ):  # fmt: skip
        """Start: the job's status views, and the page's token (a page whose token had not arrived
        yet keeps the one made for this job). Only the custom settings the user edited are sent."""
        epochs, learning_rate, batch_size, freeze, class_weights = custom_values(
            automatic, edited, epochs, learning_rate, batch_size, freeze, class_weights
        )
        status = self.start_for(
            owner_token, profile, csv_file=csv_file, zip_file=zip_file, image_col=image_column,
            text_col=text_column, label_col=label_column, base=start_from, epochs=epochs, lr=learning_rate,
            batch_size=batch_size, freeze=freeze, val_split=validation_split, name=name, overwrite=overwrite,
            class_weights=class_weights, time_budget_minutes=time_budget_minutes, group_col=group_column,
        )  # fmt: skip
        return (*status_views(status), status.get("owner_token") or owner_token)

    def start_reviewed_form(
        self, csv_file, zip_file, image_column, text_column, label_column, start_from, epochs, learning_rate,
        batch_size, freeze, validation_split, name, overwrite, class_weights, owner_token, time_budget_minutes,
        automatic, edited=None, group_column=None, profile: gr.OAuthProfile | None = None,
    ):  # fmt: skip
        """Train on the reviewed data: as Start, with the visitor's decisions on their audit applied."""
        owner = self.owner(owner_token, profile)
        if owner is None:
            raise refuse("Audit the data first (press 'Audit data' and wait for it to finish).")
        epochs, learning_rate, batch_size, freeze, class_weights = custom_values(
            automatic, edited, epochs, learning_rate, batch_size, freeze, class_weights
        )
        status = self.start(
            csv_file, zip_file, image_column, text_column, label_column, start_from, epochs, learning_rate,
            batch_size, freeze, validation_split, name, overwrite, owner, class_weights, time_budget_minutes,
            group_column, reviewed=True,
        )  # fmt: skip
        return status_views(status)

    def resume(self, owner: str | None, job: str | None = None, time_budget_minutes=None) -> dict:
        """Continues the owner's stopped, interrupted or time-limited job from its last saved epoch."""
        if owner is None:
            raise refuse("no owner token: pass the owner_token /start_finetune returned")
        try:
            return self.app.resume_job(owner, (job or "").strip() or None, self.budget_s(time_budget_minutes))
        except ValueError as e:
            raise refuse(str(e)) from None

    def resume_form(self, time_budget_minutes, owner_token=None, profile: gr.OAuthProfile | None = None):
        """Resume: the visitor's latest job, for the time budget in the form (a page without a
        job yet is told so in its own words, not the API's)."""
        owner = self.owner(owner_token, profile)
        if owner is None:
            raise refuse(NOTHING_TO_RESUME)
        return status_views(self.resume(owner, None, time_budget_minutes))

    def stop(self, owner: str | None) -> dict:
        """Stops the owner's job, at any phase."""
        if owner is None:
            raise refuse("no owner token: pass the owner_token /start_finetune returned")
        return self.app.jobs.stop(owner)

    def stop_form(self, owner_token=None, profile: gr.OAuthProfile | None = None) -> None:
        """Stop; the poll shows the job stopping. Without a job of the visitor's, a note says there
        is nothing to stop (the API's refusal names its owner_token, which a page never sees)."""
        owner = self.owner(owner_token, profile)
        if owner is None or not self.app.jobs.running(owner):
            gr.Warning(NOTHING_TO_STOP)
            return
        self.stop(owner)

    def status(self, owner: str | None) -> dict:
        """The owner's latest job."""
        return self.app.jobs.status(owner or "")

    def page_load(self, known, owner_token=None, profile: gr.OAuthProfile | None = None):
        """The first poll, and the page's owner token: a new browser gets its secret token here,
        made on the server and kept in the browser; every later event sends it (ui/identity.py)."""
        if not (isinstance(owner_token, str) and TOKEN_PATTERN.match(owner_token)):
            owner_token = self.app.new_token()  # none yet, or not one of ours
        return (*self.poll(known, owner_token, profile), owner_token)

    def poll(self, known, owner_token=None, profile: gr.OAuthProfile | None = None):
        """The visitor's job status; checkpoint lists only when they changed (a list refreshed
        every second would close a dropdown the user has open). When a job has saved its
        checkpoint, the download list offers it."""
        owner = self.owner(owner_token, profile)
        names = self.app.registry.names(owner)
        status = self.status(owner)
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
        return (*status_views(status), *lists, seen)

    # -- checkpoints: download, delete -----------------------------------------------------
    def download(self, name, owner_token=None, profile: gr.OAuthProfile | None = None) -> str:
        """A zip of a checkpoint the visitor may use; any other name is refused in our words."""
        if not name:
            raise refuse("Pick a checkpoint to download.")
        try:
            return self.app.download(str(name), self.owner(owner_token, profile))
        except ValueError as e:
            raise refuse(str(e)) from None

    def delete(self, name, owner: str | None) -> list[str]:
        """Deletes one of the owner's own checkpoints; the checkpoints they can use."""
        try:
            if owner is None:
                raise ValueError("no owner token: pass the owner_token /start_finetune returned")
            self.app.registry.delete(str(name or ""), owner)
        except ValueError as e:
            raise refuse(str(e)) from None
        return self.app.registry.names(owner)

    # -- the form kept in the browser --------------------------------------------------------
    @staticmethod
    def save(*values) -> dict:
        """The form's values (in SETTINGS' order), for the browser to keep."""
        return dict(zip(SETTINGS, values))

    def restore(
        self, values: dict | None, tab_id: str | None, owner_token=None, profile: gr.OAuthProfile | None = None
    ):
        """The form as the browser kept it (files only while they are still on the server), and
        this tab again after a reload mid-training or when it was the open one."""
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
            elif key == "image_col":
                updates.append(gr.update(choices=header, value=value) if value else gr.skip())
            elif key in ("text_col", "label_col"):
                updates.append(gr.update(choices=header, value=several(value)) if value else gr.skip())
            elif key == "group_col":
                updates.append(gr.update(choices=[NO_GROUP, *header], value=value) if value else gr.skip())
            else:
                updates.append(value if value is not None else gr.skip())
        owner = self.owner(owner_token, profile)
        back = (owner is not None and self.app.jobs.running(owner)) or tab_id == "finetune"
        return (*updates, gr.update(selected="finetune") if back else gr.skip())

    @staticmethod
    def remember_tab() -> str:
        return "finetune"


class PageLoad(NamedTuple):
    """The inputs and outputs of what the page runs when it loads (ui/__init__.py): the poll
    (``FinetuneTab.poll``, which also hands a new browser its owner token) and the form restored
    from the browser (``FinetuneTab.restore``)."""

    poll_inputs: list
    poll_outputs: list
    restore_inputs: list
    restore_outputs: list


def finetune_tab(
    app: App,
    checkpoint: gr.Dropdown,
    owner_token: gr.BrowserState,
    tabs: gr.Tabs,
    saved: gr.BrowserState,
    saved_tab: gr.BrowserState,
) -> tuple[FinetuneTab, PageLoad]:
    """The tab's components and events; every event sends ``owner_token`` (ui/identity.py);
    ``saved`` and ``saved_tab`` keep the form and the open tab in the browser (created outside
    the tabs: a hidden tab's components load nothing). Returns the handlers and what the page
    runs at load."""
    ft = FinetuneTab(app)
    names = app.registry.names()
    limit_min = app.limits.job_time_limit_min
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
            image_col = gr.Dropdown([], label="Image column", allow_custom_value=True, elem_id="image-column")
            text_col = gr.Dropdown(
                [],
                label="Text column(s)",
                multiselect=True,
                allow_custom_value=True,
                elem_id="text-column",
                info="several are joined in the order picked",
            )
            label_col = gr.CheckboxGroup(
                [],
                label="Label column(s)",
                elem_id="label-column",
                info="tick several to train one model that answers each (a task per column)",
            )
        group_col = gr.Dropdown(
            [NO_GROUP],
            value=NO_GROUP,
            label="Group column (optional)",
            allow_custom_value=True,
            elem_id="group-column",
            info="the column naming each row's source (a product, a patient, the photo a crop was cut from):"
            " the rows of one group stay together, in training or in validation, so validation measures new sources",
        )
        columns_note = gr.Markdown(label="Column roles", elem_id="columns-note")
        check = gr.Button("Check data")
        report = gr.Markdown(label="Pre-flight report", elem_id="preflight")
        review_at = gr.Column()  # the data audit's section goes here (laid out once Start from exists)
        with gr.Row():
            base = gr.Dropdown(
                [NEW_MODEL, *names],
                value=NEW_MODEL,
                label="Start from",
                allow_custom_value=True,
                elem_id="start-from",
                info="a checkpoint that already knows your labels learns faster",
            )
            time_budget = gr.Number(
                ft.default_minutes(),
                label="Time budget (minutes)",
                minimum=1,
                maximum=limit_min,
                elem_id="time-budget",
                info=f"training stops here, keeping its best epoch (at most {limit_min})",
            )
            val_split = gr.Slider(*VALIDATION_SPLIT, value=0.1, step=0.05, label="Validation split (of the images)")
            name = gr.Textbox(DEFAULT_NAME, label="New checkpoint name", elem_id="checkpoint-name")
            overwrite = gr.Checkbox(False, label="Overwrite if it exists")
        automatic = gr.Checkbox(
            True,
            label="Automatic settings (recommended)",
            info="epochs, image size, learning rate, what to freeze and class weights are chosen from your data"
            " and the time budget ('Check data' shows them); editing a custom setting below turns this off,"
            " and only the settings you edit replace the recipe's",
            elem_id="auto-settings",
        )
        # Check data fills in the recipe's choices for the data; only the fields edited are sent (an
        # empty Number arrives as 0, below its minimum: the fields always hold a value)
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
        with gr.Row():
            start = gr.Button("Start", variant="primary", elem_id="start-button")
            stop = gr.Button("Stop", variant="stop")
            resume = gr.Button(
                "Resume (from the last saved epoch, for the time budget above)",
                visible=False,
                elem_id="resume-button",
            )
        with review_at:
            review = review_section(app, [csv_file, zip_file, image_col, text_col, label_col, group_col, base],
                                    owner_token)  # fmt: skip
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
            # any name reaches FinetuneTab.download, which refuses one the visitor cannot use in its
            # own words (Gradio's choice check would answer "not in the list of choices" with a traceback)
            download_name = gr.Dropdown(
                names, label="Checkpoint to download", elem_id="download-name", min_width=200, allow_custom_value=True
            )
            download = gr.Button("Zip it", min_width=100)
            download_file = gr.File(label="Download", interactive=False, min_width=200)
        known_names = gr.State(None, time_to_live=app.limits.session_ttl_min * 60)  # what the last poll listed
        edited = gr.State([])  # the custom settings the user edited (CUSTOM's names): the ones sent

        status_outputs = [status_md, status_bar, curves, confusion, reliability, per_class, resume, job_plan]
        role_outputs = [image_col, text_col, label_col, columns_note, base]
        columns_in = [csv_file, zip_file, image_col, text_col, label_col]
        custom = [epochs, lr, batch_size, freeze, class_weights]
        csv_file.upload(ft.guess_roles, csv_file, role_outputs, api_visibility="private")
        csv_file.upload(group_choices, csv_file, group_col, api_visibility="private", queue=False)
        example_button.click(
            ft.use_example_dataset, None, [csv_file, zip_file, *role_outputs], api_visibility="private"
        ).then(group_choices, csv_file, group_col, api_visibility="private", queue=False)
        check.click(
            ft.check_form,
            [*columns_in, base, time_budget, automatic, *custom, edited, owner_token, group_col],
            [report, *custom],
            api_visibility="private",
        )
        for key, field in zip(CUSTOM, custom):
            field.input(ft.automatic_off(key), edited, [automatic, edited], api_visibility="private", queue=False)
        start.click(
            ft.start_form,
            [*columns_in, base, epochs, lr, batch_size, freeze, val_split, name, overwrite, class_weights,
             owner_token, time_budget, automatic, edited, group_col],
            [*status_outputs, owner_token],
            api_visibility="private",
            concurrency_limit=1,
            concurrency_id="train",
        )  # fmt: skip
        resume.click(
            ft.resume_form,
            [time_budget, owner_token],
            status_outputs,
            api_visibility="private",
            concurrency_limit=1,
            concurrency_id="train",
        )
        review.train.click(
            ft.start_reviewed_form,
            [*columns_in, base, epochs, lr, batch_size, freeze, val_split, name, overwrite, class_weights,
             owner_token, time_budget, automatic, edited, group_col],
            status_outputs,
            api_visibility="private",
            concurrency_limit=1,
            concurrency_id="train",
        )  # fmt: skip
        stop.click(ft.stop_form, [owner_token], None, api_visibility="private")
        download.click(ft.download, [download_name, owner_token], download_file, api_visibility="private")

        # the form survives a reload: saved in the browser on every change, restored on load
        settings = [csv_file, zip_file, image_col, text_col, label_col, base, epochs, lr, batch_size]
        settings += [freeze, val_split, name, overwrite, class_weights, time_budget, automatic, edited, group_col]
        # (in SETTINGS' order)
        for field in settings:
            field.change(ft.save, settings, saved, api_visibility="private", queue=False, show_progress="hidden")
        tab.select(ft.remember_tab, None, saved_tab, api_visibility="private", queue=False)

        poll_inputs = [known_names, owner_token]
        poll_outputs = [*status_outputs, checkpoint, base, download_name, known_names]
        timer = gr.Timer(1.0)
        timer.tick(ft.poll, poll_inputs, poll_outputs, api_visibility="private", queue=False, show_progress="hidden")
    return ft, PageLoad(poll_inputs, poll_outputs, [saved, saved_tab, owner_token], [*settings, tabs])
