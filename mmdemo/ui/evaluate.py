"""The Evaluate tab: a checkpoint on a labelled CSV (+ zip) or the built-in Sort-of-CLEVR
benchmark -> accuracy, macro-F1, calibration, accuracy per slice, a confusion matrix whose
cells list their rows, a filterable table of examples with their heatmaps (one click opens
one in Predict & Explain), ratings of the explanations, a data-set comparison with a second
checkpoint or method, and the downloadable HTML report. For a checkpoint of several tasks, a task
selector switches every figure, filter and row to the task chosen (the report holds them all).

Every handler takes the visitor's owner token (ui/identity.py) and acts for the visitor the
server resolves from it: results are kept per visitor (``evalset.ResultStore``: only a finished
run enters it, bounded per visitor and in all), a rating's rater is that visitor, and the ratings
export and summary hold only their own ratings (everyone's with ``MMDEMO_RATINGS_EXPORT_ALL=1``
or in shared mode). A ratings file that is locked or broken turns the ratings off with a note
naming it; evaluating goes on. The handlers only call the service layer (mmdemo.evaluation.engine,
mmdemo.evaluation.ratings, mmdemo.evaluation.report).
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import NamedTuple

import gradio as gr
import plotly.graph_objects as go

from ..app.backend import App
from ..app.settings import data_dir
from ..audit.core import AuditResult, run_audit, sort_findings
from ..datasets.csv_table import read_csv
from ..evaluation import engine as evalset
from ..evaluation import report
from ..evaluation.ratings import RATING_TEXT, Rating, RatingStore, RatingsUnavailable, export_all
from ..explain.methods import DEFAULT_METHOD, METHODS
from ..imaging import decode_image
from ..model.checkpoint import CARD_FILE, read_config
from ..training.settings import Stopped
from .common import markdown_text
from .identity import owner_of, refuse, unexpected, visitor_of
from .predict import PredictView, answer_after

BENCHMARK = "Built-in Sort-of-CLEVR benchmark"
UPLOAD = "My labelled CSV"
ALL = "(all)"
MAX_TABLE_ROWS = 500  # rows shown in the examples table at once (filters narrow them down)
RATING_CHOICES = [(text, key) for key, text in RATING_TEXT.items()]
COMPARE_HEADERS = ["#", "row", "image", "question", "label", "prediction"]
ANSWER_HEADERS = [*COMPARE_HEADERS[:5], "A predicted", "A confidence", "B predicted", "B confidence"]
# what ``Evaluation.views`` fills, in its order
RESULT_VIEWS = ("status", "summary", "reliability", "slice_column", "slice_table", "confusion", "wrong_only",
                "true_label", "predicted", "slice_value", "out_of_scope", "rows", "count", "audit_summary",
                "audit_rows", "task")  # fmt: skip
MIN_AUDIT_ROWS = 20  # the audit judges a row's label by what the other rows teach: fewer cannot teach it
AUDIT_HEADERS = ["row", "image", "text", "given label", "suggested label", "score"]


class PredictLink(NamedTuple):
    """The tabs, and Predict & Explain, whose inputs "Open in Predict & Explain" fills before it answers."""

    tabs: gr.Tabs
    predict: PredictView


class Evaluation:
    """The tab's handlers, bound to the app, the per-visitor results and the ratings file."""

    def __init__(self, app: App, ratings: RatingStore | None = None):
        self.app = app
        self.results = evalset.ResultStore(ttl_s=app.limits.session_ttl_min * 60)
        self.ratings = ratings or RatingStore(data_dir())
        self.ratings.check()  # a short look at start-up: a locked or broken file turns ratings off, not the app
        self._stops: dict[str, threading.Event] = {}

    # -- who is asking ---------------------------------------------------------------------
    def visitor(self, token, profile=None) -> str:
        """Whose results, stop and ratings these are (App.visitor, from the owner token)."""
        return visitor_of(self.app, token, profile)

    def owner(self, token, profile=None) -> str | None:
        """Whose checkpoints can be evaluated besides the shipped ones (App.owner)."""
        return owner_of(self.app, token, profile)

    # -- running ---------------------------------------------------------------------------
    def _dataset(self, source, scenes, csv_file, zip_file, checkpoint: str, owner: str | None) -> evalset.EvalSet:
        """The data set to evaluate; an upload is read with a label column per task of the
        checkpoint that it has a column for (engine.task_columns)."""
        if source == UPLOAD:
            if not csv_file:
                raise ValueError("Upload a labelled CSV (image,text,label), or choose the built-in benchmark.")
            tasks = read_config(self.app.registry.path(checkpoint, owner)).task_names()
            return evalset.load_csv_set(csv_file, zip_file or None, self.app.work_dir, task_names=tasks)
        return evalset.benchmark_set(self.app.work_dir / "benchmark", int(scenes or 5))

    def run(
        self,
        checkpoint,
        method,
        source,
        scenes,
        csv_file,
        zip_file,
        token=None,
        profile: gr.OAuthProfile | None = None,
        progress=gr.Progress(),  # noqa: B008 (how Gradio injects a progress bar)
    ):
        visitor, owner = self.visitor(token, profile), self.owner(token, profile)
        stop = self._stops[visitor] = threading.Event()
        checkpoint = checkpoint or self.app.default_checkpoint()
        method = method or DEFAULT_METHOD
        try:
            data = self._dataset(source, scenes, csv_file, zip_file, checkpoint, owner)
            try:  # nothing is kept of a refused or failed run: its files go with it
                self.results.room(visitor, min(len(data.examples), evalset.MAX_ROWS))
                if not self.app.registry.is_loaded(checkpoint, owner):
                    progress(0, desc=f"loading checkpoint '{checkpoint}' (first use)")
                predictor = self.app.registry.predictor(checkpoint, owner)
                progress(0, desc=f"evaluating {len(data.examples)} rows")
                result = evalset.evaluate(
                    predictor,
                    data,
                    checkpoint,
                    method,
                    progress=lambda done, total: progress(done / total, desc=f"{done} / {total} rows"),
                    should_stop=stop.is_set,
                    max_rows=evalset.MAX_ROWS,
                )
                first_slice = result.slice_columns[0] if result.slice_columns else None
                first_task = next(iter(result.tasks), None)
                self.results.put(visitor, result=result, data=data, slice=first_slice, task=first_task)
            except BaseException:
                data.delete()
                raise
        except (ValueError, TypeError) as e:
            raise refuse(str(e)) from None
        except gr.Error:
            raise
        except Exception as e:  # noqa: BLE001 - the server keeps serving
            raise unexpected("the evaluation", e) from None
        finally:
            self._stops.pop(visitor, None)
        return self.views(visitor)

    def names(self, token=None, profile: gr.OAuthProfile | None = None):
        return gr.update(choices=self.app.registry.names(self.owner(token, profile)))

    def stop(self, token=None, profile: gr.OAuthProfile | None = None) -> None:
        """Ask this visitor's run to stop after its current batch (a toast says so; the run's
        own output, which may come first, then shows what was done)."""
        try:
            event = self._stops.get(self.visitor(token, profile))
        except gr.Error:  # a page without its token yet has started nothing
            event = None
        if event is None or event.is_set():
            gr.Info("Nothing to stop.")
            return
        event.set()
        gr.Info("Stopping after the current batch ...")

    def _state(self, visitor: str) -> dict:
        state = self.results.get(visitor)
        if state is None:
            raise refuse("Run an evaluation first.")
        return state

    # -- views -----------------------------------------------------------------------------
    def _result(self, visitor: str) -> evalset.EvalResult:
        """The visitor's evaluation, of the task chosen when it has several."""
        state = self._state(visitor)
        return evalset.task_result(state["result"], state.get("task"))

    def views(self, visitor: str):
        """Every result view: status, summary, reliability, slices, confusion, filters, rows, and
        the task selector (shown for an evaluation of several tasks); all of the task chosen."""
        state = self._state(visitor)
        everything: evalset.EvalResult = state["result"]
        result = self._result(visitor)
        column = state.get("slice")
        summary = evalset.summarize(result, column)
        status = (
            f"**stopped** after {len(result.rows)} of {result.n_total} rows"
            if result.stopped
            else f"**done**: {len(result.rows)} rows"
        ) + (
            f" of *{markdown_text(result.dataset)}* with {markdown_text(result.checkpoint)} ({result.method})"
            f" in {result.seconds:.1f} s"
        )
        if result.rejected:
            status += (
                f"; {len(result.rejected)} rows rejected"
                f" (first: row {result.rejected[0][0]}: {markdown_text(result.rejected[0][1])})"
            )
        lines = [
            f"**Accuracy** {100 * summary['accuracy']:.2f} % · **macro-F1** {summary['macro_f1']:.4f} · "
            f"**ECE** (15 bins) {summary['ece']:.4f} · mean confidence {summary['calibration']['mean_confidence']:.3f}"
        ]
        if "pointing" in summary:
            p = summary["pointing"]
            lines.append(f"Heatmap peak inside the asked object: {100 * p['peak_in_asked_object']:.1f} % (n={p['n']})")
        if "out_of_scope" in summary:
            lines.append(f"Flagged out of scope: {summary['out_of_scope']} rows")
        if everything.tasks:
            each = evalset.summarize(everything)["tasks"]
            lines.insert(
                0,
                f"**Task {markdown_text(result.task)}** (rows with a label for it) · every task: "
                + ", ".join(f"{markdown_text(t)} {100 * s['accuracy']:.2f} %" for t, s in each.items()),
            )
        labels, matrix = summary["confusion"]["labels"], summary["confusion"]["matrix"]
        used = [i for i, label in enumerate(labels) if sum(matrix[i]) or sum(row[i] for row in matrix)]
        state["confusion_labels"] = [labels[i] for i in used]
        confusion = gr.update(
            value=[[labels[i], *[matrix[i][j] for j in used]] for i in used],
            headers=["true \\ predicted", *[labels[j] for j in used]],
        )
        slices = summary.get("slices", {}).get("values", {})
        slice_table = [[v, s["n"], round(100 * s["accuracy"], 2)] for v, s in slices.items()]
        class_choices = [ALL, *state["confusion_labels"]]
        table, count = self._rows_view(visitor, False, ALL, ALL, ALL, False)
        return (
            status,
            "\n\n".join(lines),
            self._reliability(summary["calibration"]),
            gr.update(choices=result.slice_columns, value=column),
            slice_table,
            confusion,
            gr.update(value=False),
            gr.update(choices=class_choices, value=ALL),
            gr.update(choices=class_choices, value=ALL),
            gr.update(choices=[ALL, *slices], value=ALL),
            gr.update(value=False),
            table,
            count,
            *self._audit_views(visitor),
            gr.update(choices=list(everything.tasks), value=state.get("task"), visible=bool(everything.tasks)),
        )

    def restore(self, token=None, profile: gr.OAuthProfile | None = None):
        """After a reload: the visitor's last evaluation as the tab shows a finished one (kept on
        the server for the visitor's owner token, not for the page), or nothing when there is none."""
        nothing = (gr.skip(),) * len(RESULT_VIEWS)
        if not (isinstance(token, str) and token) and not self.app.shared:
            return nothing
        try:
            visitor = self.visitor(token, profile)
        except gr.Error:
            return nothing
        if self.results.get(visitor) is None:
            return nothing
        return self.views(visitor)

    @staticmethod
    def remember_tab() -> str:
        return "evaluate"

    @staticmethod
    def _reliability(calibration: dict) -> go.Figure:
        bins = [b for b in calibration["bins"] if b["count"]]
        fig = go.Figure(
            [
                go.Bar(
                    x=[(b["lo"] + b["hi"]) / 2 for b in bins],
                    y=[b["accuracy"] for b in bins],
                    width=[b["hi"] - b["lo"] for b in bins],
                    name="accuracy",
                    customdata=[b["count"] for b in bins],
                    hovertemplate="confidence %{x:.2f}: accuracy %{y:.3f} (n=%{customdata})",
                ),
                go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="calibrated", line={"dash": "dash"}),
            ]
        )
        fig.update_layout(  # no title: the block's label names it and the summary gives the ECE
            xaxis={"title": "confidence", "range": [0, 1]},
            yaxis={"title": "accuracy", "range": [0, 1]},
            height=320,
            margin={"l": 10, "r": 10, "t": 20, "b": 10},
            showlegend=False,
        )
        return fig

    def _rows_view(self, visitor, wrong_only, true_label, predicted, slice_value, out_of_scope):
        state = self._state(visitor)
        result = self._result(visitor)
        column = state.get("slice")
        rows = evalset.filter_rows(
            result,
            wrong_only=bool(wrong_only),
            true_label=None if true_label in (None, ALL) else true_label,
            predicted_label=None if predicted in (None, ALL) else predicted,
            slice_column=column,
            slice_value=None if slice_value in (None, ALL) else slice_value,
            out_of_scope_only=bool(out_of_scope),
        )
        shown = rows[:MAX_TABLE_ROWS]
        headers = ["#", "row", "image", "question", "label", "prediction", "confidence", "correct"]
        headers += [column] if column else []
        headers += ["in scope"]
        value = [
            [
                r.index,
                r.row,
                r.image_name,
                r.text,
                r.label,
                r.prediction,
                round(r.confidence, 4),
                "yes" if r.correct else "no",
                *([r.slices.get(column, "")] if column else []),
                "" if r.in_scope is None else ("yes" if r.in_scope else "no"),
            ]
            for r in shown
        ]
        count = f"{len(rows)} of {len(result.rows)} rows match" + (
            f" (the first {MAX_TABLE_ROWS} shown)" if len(rows) > MAX_TABLE_ROWS else ""
        )
        return gr.update(value=value, headers=headers), count

    def filter(
        self, wrong_only, true_label, predicted, slice_value, out_of_scope, token=None,
        profile: gr.OAuthProfile | None = None,
    ):  # fmt: skip
        visitor = self.visitor(token, profile)
        return self._rows_view(visitor, wrong_only, true_label, predicted, slice_value, out_of_scope)

    def choose_slice(self, column, token=None, profile: gr.OAuthProfile | None = None):
        visitor = self.visitor(token, profile)
        self._state(visitor)["slice"] = column or None
        return self.views(visitor)

    def choose_task(self, task, token=None, profile: gr.OAuthProfile | None = None):
        """Every view switched to another task of the evaluation (its filters reset, no row selected)."""
        visitor = self.visitor(token, profile)
        state = self._state(visitor)
        try:
            evalset.task_result(state["result"], task)
        except ValueError as e:
            raise refuse(str(e)) from None
        if state["result"].tasks:
            state["task"] = task
            state.pop("selected", None)
        return self.views(visitor)

    def confusion_cell(self, evt: gr.SelectData, token=None, profile: gr.OAuthProfile | None = None):
        """A click on a confusion-matrix count: the filters set to that cell, its rows listed."""
        visitor = self.visitor(token, profile)
        labels = self._state(visitor).get("confusion_labels") or []
        row, col = evt.index if isinstance(evt.index, (list, tuple)) else (None, None)
        if row is None or col is None or col < 1 or row >= len(labels) or col - 1 >= len(labels):
            return [gr.skip()] * 7
        true_label, predicted = labels[row], labels[col - 1]
        table, count = self._rows_view(visitor, False, true_label, predicted, ALL, False)
        return False, true_label, predicted, ALL, False, table, count

    # -- the data audit of the evaluated set -------------------------------------------------
    def audit(
        self,
        token=None,
        profile: gr.OAuthProfile | None = None,
        progress=gr.Progress(),  # noqa: B008 (how Gradio injects a progress bar)
    ):
        """Audit the visitor's evaluated upload (mmdemo.audit, as ``python -m mmdemo audit``): its
        wrong labels, duplicates and outliers; kept with the visitor's evaluation."""
        visitor = self.visitor(token, profile)
        state = self._state(visitor)
        data: evalset.EvalSet = state["data"]
        if data.folder is None:
            raise refuse(
                "The audit checks a labelled CSV you uploaded: choose My labelled CSV, evaluate it, then audit it."
            )
        n, most = len(data.examples), self.app.limits.max_csv_rows
        if n < MIN_AUDIT_ROWS:
            raise refuse(
                f"This set has {n} rows, too few to audit: the audit judges each label by what the other rows teach "
                f"about it, and needs at least {MIN_AUDIT_ROWS} rows."
            )
        if n > most:
            raise refuse(f"This set has {n:,} rows; the audit takes at most {most:,} here.")
        stop = self._stops[visitor] = threading.Event()

        def report(event: dict) -> None:
            done, total = event.get("done"), event.get("total")
            desc = event.get("message") or f"audit: {event['stage']}"
            progress((done, total) if done is not None and total else None, desc=desc)

        task = state.get("task")
        column = data.label_columns[data.tasks.index(task)] if task in data.tasks else data.label_columns[0]
        try:
            dataset = read_csv(data.folder / "data.csv", data.image_column, "text", column, confine=True)
            progress(None, desc=f"auditing {n} rows")
            audited = run_audit(dataset, report, should_stop=stop.is_set, device=self.app.registry.device)
        except Stopped:
            raise refuse("The audit was stopped; nothing was kept.") from None
        except ValueError as e:
            raise refuse(str(e)) from None
        except Exception as e:  # noqa: BLE001 - the server keeps serving
            raise unexpected("the audit", e) from None
        finally:
            self._stops.pop(visitor, None)
        state["audit"], state["audit_task"] = audited, task
        return self._audit_views(visitor)

    def _audit_views(self, visitor: str):
        """The audit's summary (accuracy with and without the rows flagged as label issues) and its
        flagged rows; empty before an audit of this evaluation."""
        state = self._state(visitor)
        audited: AuditResult | None = state.get("audit")
        if audited is None or state.get("audit_task") != state.get("task"):  # an audit is of one task's labels
            return "", gr.update(value=[], headers=AUDIT_HEADERS)
        result = self._result(visitor)
        flagged = [f for f in sort_findings(audited.findings) if f.issue == "label"]
        rows = {f.row for f in flagged}
        kept = [r for r in result.rows if r.row not in rows]

        def accuracy(rows) -> str:
            return f"{100 * sum(r.correct for r in rows) / len(rows):.2f} %" if rows else "no rows"

        dropped = len(result.rows) - len(kept)
        counts = audited.counts
        others = ", ".join(
            f"{counts[k]} {name}"
            for k, name in (
                ("duplicate", "identical copies"),
                ("near_duplicate", "near-copies"),
                ("outlier", "outliers"),
            )
            if counts[k]
        )
        summary = (
            f"**Audit**: {len(flagged)} rows whose label looks wrong (of {audited.rows} audited, in"
            f" {audited.seconds:.0f} s). **Accuracy** {accuracy(result.rows)} on all {len(result.rows)} rows evaluated"
            f" · **{accuracy(kept)} without the {dropped} flagged** ({len(kept)} rows)."
            + (f" Also found: {others}." if others else "")
        )
        table = [
            [f.row, f.image, f.text, f.label, f.suggested_label, round(f.score, 4)] for f in flagged[:MAX_TABLE_ROWS]
        ]
        return summary, gr.update(value=table, headers=AUDIT_HEADERS)

    # -- one example -----------------------------------------------------------------------
    def select_row(self, evt: gr.SelectData, token=None, profile: gr.OAuthProfile | None = None):
        """A click on a row of the examples table: its heatmap and details."""
        visitor = self.visitor(token, profile)
        result = self._result(visitor)
        try:
            index = int((evt.row_value or [])[0])
            r = result.rows[index]
        except (TypeError, ValueError, IndexError):
            return gr.skip(), gr.skip()
        self._state(visitor)["selected"] = index
        top = sorted(r.scores.items(), key=lambda kv: -kv[1])[:3]
        label, share = markdown_text(r.prediction), f"{100 * r.confidence:.1f} %"
        if r.in_scope is False:  # an abstention leads with the abstention, as in Predict & Explain
            answer = f"**Not sure: out of scope** — its best guess would be {label} ({share})"
        else:
            answer = f"predicted **{label}** ({share})"
        detail = (
            f"**Row {r.row}** · {markdown_text(r.image_name)} · *{markdown_text(r.text)}*  \n"
            f"true **{markdown_text(r.label)}**, {answer} "
            f"{'✓ right' if r.correct else '✗ wrong'} · top 3: " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in top)
        )
        return report.row_overlay(r), detail

    def _selected(self, visitor: str) -> evalset.RowResult:
        result = self._result(visitor)
        index = self._state(visitor).get("selected")
        if index is None or index >= len(result.rows):
            raise refuse("Click a row of the examples table first.")
        return result.rows[index]

    def open_in_predict(self, token=None, profile: gr.OAuthProfile | None = None):
        """Predict & Explain opened on the selected row: its image, question, checkpoint and method
        (it then answers, ui/predict.py ``answer_after``)."""
        visitor = self.visitor(token, profile)
        r, result = self._selected(visitor), self._result(visitor)
        return gr.Tabs(selected="predict"), r.image, r.text, result.checkpoint, result.method

    def export_selected(self, token=None, profile: gr.OAuthProfile | None = None):
        """The selected example's prediction (recomputed with its word maps) as overlay PNG + JSON."""
        visitor = self.visitor(token, profile)
        r, result = self._selected(visitor), self._result(visitor)
        try:
            predictor = self.app.registry.predictor(result.checkpoint, self.owner(token, profile))
            image = decode_image(r.image, name=r.image_name)
            prediction = predictor.predict_batch([image], [r.text], result.method, result.task or None)[0]
        except ValueError as e:
            raise refuse(str(e)) from None
        settings = {
            "checkpoint": result.checkpoint,
            "method": result.method,
            "image": r.image_name,
            "image_sha256_16": evalset.image_digest(r.image),
            "question": r.text,
            "true_label": r.label,
            "opacity": report.OPACITY,
        }
        out = Path(tempfile.mkdtemp(prefix="export-", dir=self.app.work_dir))
        return str(
            report.export_prediction(
                out, image, prediction.to_json(), prediction.explanation.word_maps.tolist(), settings
            )
        )

    # -- ratings ---------------------------------------------------------------------------
    def _shown_rater(self, visitor: str) -> str | None:
        """Whose ratings the summary and the export hold: the visitor's own, or everyone's where
        the host says so (MMDEMO_RATINGS_EXPORT_ALL) or everything is shared."""
        return None if (self.app.shared or export_all()) else visitor

    def rate(self, rating, comment, token=None, profile: gr.OAuthProfile | None = None):
        visitor = self.visitor(token, profile)
        r, result = self._selected(visitor), self._result(visitor)
        if not rating:
            raise refuse("Choose a rating: points at the right thing, partly, or wrong.")
        try:
            rating_id = self.ratings.add(
                Rating(
                    rater=visitor,
                    checkpoint=result.checkpoint,
                    image_hash=evalset.image_digest(r.image),
                    image_name=r.image_name,
                    question=r.text,
                    prediction=r.prediction,
                    method=result.method,
                    rating=rating,
                    comment=comment or "",
                )
            )
        except (ValueError, RatingsUnavailable) as e:
            raise refuse(str(e)) from None
        saved = f"Saved rating #{rating_id} ({RATING_TEXT[rating]}) for row {r.row}."
        return saved, self._summary_rows(visitor), ""

    def _summary_rows(self, visitor: str) -> list[list]:
        try:
            summary = self.ratings.summary(rater=self._shown_rater(visitor))
        except RatingsUnavailable:
            return []
        return [[name, s["right"], s["partly"], s["wrong"], s["total"]] for name, s in summary.items()]

    def ratings_note(self) -> str:
        """What the page says about the ratings: whose it shows, or why they are off."""
        if self.ratings.problem:
            return f"**{self.ratings.problem}**"
        if self.app.shared or export_all():
            return "Everyone's ratings on this server."
        return "Your own ratings (kept with your owner token in this browser)."

    def ratings_table(self, token=None, profile: gr.OAuthProfile | None = None):
        """The ratings summary the visitor may see, and the note about them."""
        rows = self._summary_rows(self.visitor(token, profile)) if token or self.app.shared else []
        return rows, self.ratings_note()

    def export_ratings(self, token=None, profile: gr.OAuthProfile | None = None) -> str:
        visitor = self.visitor(token, profile)
        out = Path(tempfile.mkdtemp(prefix="ratings-", dir=self.app.work_dir)) / "ratings.csv"
        try:
            self.ratings.export_csv(out, rater=self._shown_rater(visitor))
        except RatingsUnavailable as e:
            out.parent.rmdir()
            raise refuse(str(e)) from None
        return str(out)

    # -- report and comparison -------------------------------------------------------------
    def download_report(
        self,
        token=None,
        profile: gr.OAuthProfile | None = None,
        progress=gr.Progress(),  # noqa: B008 (how Gradio injects a progress bar)
    ) -> str:
        """The HTML report of the visitor's evaluation; its slow steps (measuring faithfulness,
        drawing the errors' heatmaps) show where they are."""

        def step(what: str, done: int, total: int) -> None:
            progress(done / max(1, total), desc=f"{what} {done}/{total}")

        visitor = self.visitor(token, profile)
        result = self._state(visitor)["result"]  # every task's
        card, faithfulness, recorded = "", None, None
        try:
            owner = self.owner(token, profile)
            path = self.app.registry.path(result.checkpoint, owner)
            card = (path / CARD_FILE).read_text() if (path / CARD_FILE).is_file() else ""
            recorded = report.recorded_faithfulness(path)
            # both methods' faithfulness on a bounded sample of the rows evaluated
            pairs = [(r.image, r.text) for r in result.rows]
            predictor = self.app.registry.predictor(result.checkpoint, owner)
            faithfulness = evalset.faithfulness(path, predictor, pairs, progress=step)
        except ValueError:
            pass  # the checkpoint (or an image) is gone since the run: report without them
        try:
            ratings = self.ratings.summary(rater=self._shown_rater(visitor))
        except RatingsUnavailable:
            ratings = None  # the report says there are none
        html = report.build_report(result, card, ratings, faithfulness, recorded=recorded, progress=step)
        progress(1.0, desc="writing the report")
        out = Path(tempfile.mkdtemp(prefix="report-", dir=self.app.work_dir)) / f"report-{result.checkpoint}.html"
        out.write_text(html, encoding="utf-8")
        return str(out)

    def compare_dataset(
        self,
        checkpoint_b,
        method_b,
        token=None,
        profile: gr.OAuthProfile | None = None,
        progress=gr.Progress(),  # noqa: B008 (how Gradio injects a progress bar)
    ):
        """The same rows through a second checkpoint: the rows where the answers differ; or through
        the same checkpoint with the other explanation method, which never changes an answer: the
        rows where the two heatmaps peak on different objects (engine.peak_shifts). Nothing is
        stored: the visitor's evaluation stays as it was."""
        visitor = self.visitor(token, profile)
        state = self._state(visitor)
        result = self._result(visitor)
        checkpoint_b = checkpoint_b or result.checkpoint
        method_b = method_b or DEFAULT_METHOD
        if checkpoint_b == result.checkpoint and method_b == result.method:
            raise refuse(
                f"The evaluation used {result.checkpoint} with {result.method}: choose a second checkpoint (to see "
                "where the answers differ) or the other explanation method (to see where the heatmaps point elsewhere)."
            )
        stop = self._stops[visitor] = threading.Event()
        data: evalset.EvalSet = state["data"]
        done_rows = {r.row for r in result.rows}
        data = evalset.EvalSet(**{**data.__dict__, "examples": [e for e in data.examples if e.row in done_rows]})
        try:
            other = evalset.evaluate(
                self.app.registry.predictor(checkpoint_b, self.owner(token, profile)),
                data,
                checkpoint_b,
                method_b,
                progress=lambda done, total: progress(done / total, desc=f"{done} / {total} rows"),
                should_stop=stop.is_set,
            )
            other = evalset.task_result(other, state.get("task"))  # the same task's answers
        except (ValueError, TypeError) as e:
            raise refuse(str(e)) from None
        except Exception as e:  # noqa: BLE001 - the server keeps serving
            raise unexpected("the comparison", e) from None
        finally:
            self._stops.pop(visitor, None)
        rows = [r for r in result.rows if r.row in {o.row for o in other.rows}]
        b_acc = sum(r.correct for r in other.rows) / max(1, len(other.rows))
        a_acc = sum(r.correct for r in rows) / max(1, len(rows))
        a_name, b_name = f"`{result.checkpoint}` ({result.method})", f"`{checkpoint_b}` ({method_b})"
        if checkpoint_b == result.checkpoint:  # the method changes the heatmap, never the answer
            shifts = evalset.peak_shifts(result, other)
            text = (
                f"{a_name} and {b_name} give the same answers ({100 * a_acc:.2f} %) on the same {len(other.rows)} rows;"
                f" **{len(shifts)} rows where the two heatmaps peak on different objects** (or, for images that are"
                " not scenes of objects, in different regions)."
            )
            table = [[s.a.index, s.a.row, s.a.image_name, s.a.text, s.a.label, s.a.prediction, s.where_a, s.where_b]
                     for s in shifts[:MAX_TABLE_ROWS]]  # fmt: skip
            headers = [*COMPARE_HEADERS[:6], f"A peaks on ({result.method})", f"B peaks on ({method_b})"]
            return text, gr.update(value=table, headers=headers)
        pairs = evalset.disagreements(result, other)
        text = (
            f"{a_name}: {100 * a_acc:.2f} % · {b_name}: {100 * b_acc:.2f} % on the same {len(other.rows)} rows;"
            f" **{len(pairs)} rows where the answers differ**."
        )
        table = [
            [a.index, a.row, a.image_name, a.text, a.label, a.prediction, round(a.confidence, 4), b.prediction,
             round(b.confidence, 4)]
            for a, b in pairs[:MAX_TABLE_ROWS]
        ]  # fmt: skip
        return text, gr.update(value=table, headers=ANSWER_HEADERS)


class EvaluateView(NamedTuple):
    """What the page runs for this tab when it loads (ui/__init__.py): the visitor's last
    evaluation brought back after a reload."""

    tab: Evaluation
    load_inputs: list
    load_outputs: list


def evaluate_tab(
    app: App,
    link: PredictLink,
    owner_token: gr.BrowserState,
    ratings: RatingStore | None = None,
    saved_tab: gr.BrowserState | None = None,
) -> EvaluateView:
    """The tab's components and events; every event sends ``owner_token`` (ui/identity.py);
    ``saved_tab`` remembers in the browser that this tab was the open one."""
    ev = Evaluation(app, ratings)
    token = owner_token
    names = app.registry.names()
    with gr.Tab("Evaluate", id="evaluate") as tab:
        if saved_tab is not None:  # a reload opens this tab again (ui/common.py reopen_tab)
            tab.select(ev.remember_tab, None, saved_tab, api_visibility="private", queue=False)
        gr.Markdown(
            "Evaluate a checkpoint on a labelled data set: a CSV (image,text,label; other columns become slices) "
            "plus a zip of its images, or the built-in Sort-of-CLEVR benchmark. Click a confusion-matrix cell "
            "to list its rows, a row to see its heatmap, rate it, or open it in Predict & Explain."
        )
        with gr.Row():
            # a name not in the list (another visitor's, or not yet listed) reaches the handler, which
            # answers "unknown checkpoint" for it, instead of Gradio's choice check and its traceback
            checkpoint = gr.Dropdown(
                names, value=app.default_checkpoint(), label="Checkpoint", elem_id="eval-checkpoint",
                allow_custom_value=True,
            )  # fmt: skip
            method = gr.Radio(list(METHODS), value=DEFAULT_METHOD, label="Explanation", elem_id="eval-method")
            source = gr.Radio([BENCHMARK, UPLOAD], value=BENCHMARK, label="Data", elem_id="eval-source")
            scenes = gr.Number(
                5,
                label="Benchmark scenes (20 questions each)",
                precision=0,
                minimum=1,
                maximum=200,
                elem_id="eval-scenes",
            )
        with gr.Row():
            csv_file = gr.File(label="Labelled CSV", file_types=[".csv"], type="filepath", elem_id="eval-csv")
            zip_file = gr.File(label="Images (zip, optional)", file_types=[".zip"], type="filepath", elem_id="eval-zip")
        with gr.Row():
            run = gr.Button("Evaluate", variant="primary", elem_id="eval-run")
            stop = gr.Button("Stop", variant="stop", elem_id="eval-stop")
        status = gr.Markdown(elem_id="eval-status")
        # shown for a checkpoint of several tasks: every view below is of the task chosen
        task = gr.Radio([], label="Task", visible=False, elem_id="eval-task")
        summary = gr.Markdown(elem_id="eval-summary")
        with gr.Row():
            reliability = gr.Plot(label="Calibration (reliability diagram)")
            with gr.Column():
                slice_column = gr.Dropdown(
                    [], label="Accuracy per value of", elem_id="eval-slice-column", allow_custom_value=True
                )
                slice_table = gr.Dataframe(
                    headers=["value", "rows", "accuracy %"], interactive=False, elem_id="eval-slices"
                )
        gr.Markdown("**Confusion matrix** (rows: true label, columns: predicted). Click a count to list its rows.")
        confusion = gr.Dataframe(interactive=False, elem_id="eval-confusion")
        with gr.Row():
            wrong_only = gr.Checkbox(False, label="Wrong only", elem_id="eval-wrong-only")
            true_label = gr.Dropdown([ALL], value=ALL, label="True label", elem_id="eval-true", allow_custom_value=True)
            predicted = gr.Dropdown(
                [ALL], value=ALL, label="Predicted", elem_id="eval-predicted", allow_custom_value=True
            )
            slice_value = gr.Dropdown(
                [ALL], value=ALL, label="Slice value", elem_id="eval-slice-value", allow_custom_value=True
            )
            out_of_scope = gr.Checkbox(False, label="Out of scope only", elem_id="eval-oos")
        count = gr.Markdown(elem_id="eval-count")
        rows = gr.Dataframe(interactive=False, max_height=420, elem_id="eval-rows")
        with gr.Row():
            overlay = gr.Image(label="Heatmap of the selected row", interactive=False, elem_id="eval-overlay")
            with gr.Column():
                detail = gr.Markdown("Click a row to see its heatmap.", elem_id="eval-detail")
                open_predict = gr.Button("Open in Predict & Explain", elem_id="eval-open")
                export = gr.Button("Export this prediction (overlay PNG + JSON)", elem_id="eval-export")
                export_file = gr.File(label="Prediction export", interactive=False, elem_id="eval-export-file")
                rating = gr.Radio(
                    RATING_CHOICES, label="Does the heatmap point at the right thing?", elem_id="eval-rating"
                )
                comment = gr.Textbox(label="Comment (optional)", max_length=2000, elem_id="eval-comment")
                save_rating = gr.Button("Save rating", elem_id="eval-save-rating")
                rating_status = gr.Markdown(elem_id="eval-rating-status")
        ratings_note = gr.Markdown(ev.ratings_note(), elem_id="eval-ratings-note")
        with gr.Row():
            ratings_table = gr.Dataframe(
                [],  # the visitor's own, filled whenever the tab is opened (below)
                headers=["checkpoint", RATING_TEXT["right"], RATING_TEXT["partly"], RATING_TEXT["wrong"], "total"],
                interactive=False,
                label="Ratings per checkpoint",
                elem_id="eval-ratings-summary",
            )
            with gr.Column():
                export_ratings = gr.Button("Export ratings (CSV)", elem_id="eval-export-ratings")
                ratings_file = gr.File(label="Ratings CSV", interactive=False, elem_id="eval-ratings-file")
                make_report = gr.Button("Download the evaluation report (HTML)", elem_id="eval-report")
                report_file = gr.File(label="Report", interactive=False, elem_id="eval-report-file")
        gr.Markdown(
            "**Compare on this data set** with a second checkpoint (the rows where the answers differ), or with the "
            "other explanation method of the same checkpoint (the rows where the heatmaps point at different objects: "
            "the method changes the heatmap, never the answer)."
        )
        with gr.Row():
            checkpoint_b = gr.Dropdown(
                names, value=app.default_checkpoint(), label="Second checkpoint", elem_id="eval-checkpoint-b",
                allow_custom_value=True,
            )  # fmt: skip
            method_b = gr.Radio(list(METHODS), value=DEFAULT_METHOD, label="Its explanation", elem_id="eval-method-b")
            compare = gr.Button("Compare", elem_id="eval-compare")
        compare_text = gr.Markdown(elem_id="eval-compare-summary")
        compare_rows = gr.Dataframe(headers=ANSWER_HEADERS, interactive=False, elem_id="eval-disagree")

        gr.Markdown(
            "**Audit this data set**: after an evaluation of your CSV, look for rows whose label looks wrong (and for "
            "copies and outliers), and see the accuracy with and without the rows flagged. Stop ends it."
        )
        audit = gr.Button("Audit the labels of this set", elem_id="eval-audit")
        audit_summary = gr.Markdown(elem_id="eval-audit-summary")
        audit_rows = gr.Dataframe(
            headers=AUDIT_HEADERS, interactive=False, max_height=420, label="Rows flagged", elem_id="eval-audit-rows"
        )

        for dropdown in (checkpoint, checkpoint_b):  # fine-tuned checkpoints appear when the list opens
            dropdown.focus(ev.names, token, dropdown, api_name=False, queue=False)
        filters = [wrong_only, true_label, predicted, slice_value, out_of_scope]
        result_views = [status, summary, reliability, slice_column, slice_table, confusion, *filters, rows, count,
                        audit_summary, audit_rows, task]  # fmt: skip
        assert len(result_views) == len(RESULT_VIEWS)
        run.click(
            ev.run,
            [checkpoint, method, source, scenes, csv_file, zip_file, token],
            result_views,
            api_name=False,
            concurrency_limit=1,
            concurrency_id="evaluate",
        )
        # queued, so its toast reaches the page (Gradio drops gr.Info outside the queue); no limit:
        # it only sets an event, and never waits for another visitor's Stop
        stop.click(ev.stop, token, None, api_name=False, concurrency_limit=None)
        for f in filters:
            f.input(ev.filter, [*filters, token], [rows, count], api_name=False)
        slice_column.input(ev.choose_slice, [slice_column, token], result_views, api_name=False)
        task.input(ev.choose_task, [task, token], result_views, api_name=False)
        confusion.select(ev.confusion_cell, token, [*filters, rows, count], api_name=False)
        rows.select(ev.select_row, token, [overlay, detail], api_name=False)
        image, text, checkpoint_p, method_p = link.predict.inputs[:4]
        opened = open_predict.click(
            ev.open_in_predict, token, [link.tabs, image, text, checkpoint_p, method_p], api_name=False
        )
        answer_after(link.predict, opened, app.limits.predict_concurrency)
        export.click(ev.export_selected, token, export_file, api_name=False)
        tab.select(ev.ratings_table, token, [ratings_table, ratings_note], api_visibility="private", queue=False)
        save_rating.click(ev.rate, [rating, comment, token], [rating_status, ratings_table, comment], api_name=False)
        export_ratings.click(ev.export_ratings, token, ratings_file, api_name=False)
        make_report.click(ev.download_report, token, report_file, api_name=False)
        compare.click(
            ev.compare_dataset,
            [checkpoint_b, method_b, token],
            [compare_text, compare_rows],
            api_name=False,
            concurrency_limit=1,
            concurrency_id="evaluate",
        )
        audit.click(
            ev.audit,
            token,
            [audit_summary, audit_rows],
            api_name=False,
            concurrency_limit=1,
            concurrency_id="evaluate",
        )
    return EvaluateView(ev, [token], result_views)
