"""The data audit in the Fine-tune tab: "Audit data" runs the audit of the uploaded CSV + zip
as the visitor's job (progress and Stop in the job status, like a fine-tune), then a review
list of what it found, most sure first: the picture, the text, the given label, the suggested
label, and three actions for the row (keep, relabel to the suggestion or to a typed label,
exclude). The decisions are kept on the server with the visitor's audit (a reload keeps them),
downloadable as a CSV, and "Train on the reviewed data" trains with them applied: the upload is
unchanged, and the training record and the model card list what was excluded and relabelled.

``ReviewTab`` holds the handlers (each resolves the visitor on the server, ui/identity.py);
``review_section`` lays out the components inside the Fine-tune tab.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import gradio as gr

from ..app.backend import App
from ..app.worker import REVIEW_FOLDER
from ..audit.core import ISSUES
from .common import markdown_text
from .identity import owner_of, refuse, unexpected

ALL = "all findings"
ISSUE_NAMES = {
    "label": "label looks wrong",
    "duplicate": "identical copy",
    "near_duplicate": "near-identical copy",
    "leak": "also in the test data",
    "mismatch": "image and text do not match",
    "outlier": "unlike the other images",
}
COUNTED = {  # "3 rows whose label looks wrong"
    "label": ("row whose label looks wrong", "rows whose label looks wrong"),
    "duplicate": ("identical copy", "identical copies"),
    "near_duplicate": ("near-identical copy", "near-identical copies"),
    "leak": ("image also in the test data", "images also in the test data"),
    "mismatch": ("row whose image and text do not match", "rows whose image and text do not match"),
    "outlier": ("image unlike the others", "images unlike the others"),
}
SHOWN = 200  # findings in the review list at a time (filter by kind to see others)
DECISION_WORDS = {"keep": "kept as it is", "exclude": "excluded", "relabel": "relabelled"}


class ReviewView(NamedTuple):
    """What the section shows of the visitor's audit."""

    summary: str
    gallery: list
    shown: list  # the rows in the gallery, in its order
    decisions: list[list]
    audit_id: str


def _caption(finding: dict) -> str:
    kind = ISSUE_NAMES.get(finding["issue"], finding["issue"])
    if finding["issue"] == "label":
        return f"row {finding['row']}: {kind}: {finding['label']} -> {finding['suggested_label']}?"
    if finding.get("duplicate_of"):
        return f"row {finding['row']}: {kind} of {finding['duplicate_of']}"
    return f"row {finding['row']}: {kind}"


def decisions_table(review: dict) -> list[list]:
    """One line per decided row: row, image, given label, decision, new label."""
    by_row = {}
    for f in review["findings"]:
        by_row.setdefault(int(f["row"]), f)
    lines = []
    for row in sorted(int(r) for r in review["decisions"]):
        decision = review["decisions"][str(row)]
        finding = by_row.get(row, {})
        lines.append([row, finding.get("image", ""), finding.get("label", ""), DECISION_WORDS[decision["action"]],
                      decision.get("label", "")])  # fmt: skip
    return lines


def review_view(review: dict | None, issue: str | None) -> ReviewView:
    """The summary, the review list (filtered by kind of issue) and the decisions."""
    if review is None:
        return ReviewView("", [], [], [], "")
    state = review["state"]
    if state != "done":
        words = {"queued": "waiting for its turn", "preparing": "starting", "running": "running"}
        return ReviewView(f"The data audit is {words.get(state, state)}: {markdown_text(review['message'])}",
                          [], [], [], "")  # fmt: skip
    findings = review["findings"]
    counts = review["counts"]
    found = ", ".join(f"{n} {COUNTED[i][n != 1]}" for i, n in counts.items() if n)
    lines = [f"**Data audit of {markdown_text(review['csv_name'])}**: {found or 'nothing found'}."]
    if findings:
        lines.append(
            "Click a finding to see it, then keep it, relabel it or exclude it; 'Train on the reviewed data'"
            " trains with your decisions applied (your upload is not changed)."
        )
    if review.get("more"):
        lines.append(f"The {review['more']:,} least sure findings are not listed.")
    wanted = [f for f in findings if issue in (None, "", ALL) or f["issue"] == issue]
    if len(wanted) > SHOWN:
        lines.append(f"Showing the {SHOWN} surest of {len(wanted):,}: pick one kind of finding to see others.")
    wanted = wanted[:SHOWN]
    folder = Path(review["folder"]) / REVIEW_FOLDER
    listed = [(f, folder / f["thumbnail"]) for f in wanted if f.get("thumbnail")]
    listed = [(f, picture) for f, picture in listed if picture.is_file()]  # gone when the upload expired
    gallery = [(str(picture), _caption(f)) for f, picture in listed]
    return ReviewView("\n\n".join(lines), gallery, [f["row"] for f, _ in listed], decisions_table(review), review["id"])


def finding_words(review: dict, row: int | None) -> str:
    """The selected row: every finding on it, its text, labels and decision."""
    if review is None or row is None:
        return "Click a finding in the list to review it."
    found = [f for f in review["findings"] if int(f["row"]) == int(row)]
    if not found:
        return "Click a finding in the list to review it."
    first = found[0]
    lines = [f"**Row {row}** of your CSV: `{markdown_text(first['image'])}`"]
    lines.append(f"- text: {markdown_text(first['text'])}")
    lines.append(f"- given label: **{markdown_text(first['label'])}**")
    for f in found:
        line = f"- {ISSUE_NAMES.get(f['issue'], f['issue'])} (score {f['score']:.3f}; the lower, the surer)"
        if f["suggested_label"]:
            line += f": suggested label **{markdown_text(f['suggested_label'])}**"
        if f.get("duplicate_of"):
            line += f": the other image is `{markdown_text(f['duplicate_of'])}`"
        lines.append(line)
    decision = review["decisions"].get(str(row))
    if decision:
        to = f" to {markdown_text(decision['label'])}" if decision.get("label") else ""
        lines.append(f"- your decision: **{DECISION_WORDS[decision['action']]}{to}**")
    else:
        lines.append("- your decision: none yet (kept as it is unless you decide)")
    return "\n".join(lines)


class ReviewTab:
    """The audit section's handlers, bound to the app."""

    def __init__(self, app: App):
        self.app = app

    def _review(self, owner_token, profile) -> tuple[str | None, dict | None]:
        owner = owner_of(self.app, owner_token, profile)
        return owner, (self.app.audit_review(owner) if owner else None)

    def start(self, csv_file, zip_file, image_col, text_col, label_col, group_col, base, owner_token=None,
              profile: gr.OAuthProfile | None = None):  # fmt: skip
        """Audit data: queue the audit of the upload; the job status shows its progress. Returns
        the page's token (a page whose token had not arrived yet gets one here)."""
        from .finetune import NEW_MODEL, group_of

        owner = owner_of(self.app, owner_token, profile)
        if owner is None:
            owner_token = self.app.new_token()
            owner = self.app.owner(owner_token)
        try:
            self.app.start_audit(
                owner, csv_file, zip_file, (image_col, text_col, label_col, group_of(group_col)),
                None if base in (None, "", NEW_MODEL) else str(base),
            )  # fmt: skip
        except ValueError as e:
            raise refuse(str(e)) from None
        except Exception as e:  # noqa: BLE001 - the server keeps serving
            raise unexpected("starting the data audit", e) from None
        return (
            owner_token,
            "The data audit is waiting for its turn (its progress and Stop are in the job status below).",
        )

    def poll(self, shown_id, issue, owner_token=None, profile: gr.OAuthProfile | None = None):
        """Every second: the review list when the visitor's audit has finished (or changed), else
        nothing (a list redrawn every second would lose the visitor's place)."""
        _, review = self._review(owner_token, profile)
        if review is None:
            return (gr.skip(),) * 6
        if review["state"] != "done":  # a new audit: the list of an older one goes
            summary = review_view(review, issue).summary
            if shown_id:
                return summary, [], [], [], finding_words(None, None), ""
            return summary, *(gr.skip(),) * 5
        if review["id"] == shown_id:
            return (gr.skip(),) * 6
        view = review_view(review, issue)
        return view.summary, view.gallery, view.shown, view.decisions, finding_words(review, None), view.audit_id

    def filter(self, issue, owner_token=None, profile: gr.OAuthProfile | None = None):
        """Another kind of finding picked: the list shows those."""
        _, review = self._review(owner_token, profile)
        view = review_view(review, issue)
        return view.summary, view.gallery, view.shown, None, finding_words(review, None)

    def select(self, shown, evt: gr.SelectData, owner_token=None, profile: gr.OAuthProfile | None = None):
        """A finding clicked: its row, shown with its picture and what was found."""
        _, review = self._review(owner_token, profile)
        index = evt.index if isinstance(evt.index, int) else None
        row = shown[index] if review and shown and index is not None and 0 <= index < len(shown) else None
        picture = self._picture(review, row)
        suggested = self._suggested(review, row)
        return row, finding_words(review, row), picture, gr.update(value=suggested)

    @staticmethod
    def _suggested(review: dict | None, row: int | None) -> str:
        if review is None or row is None:
            return ""
        return next((f["suggested_label"] for f in review["findings"] if f["row"] == row and f["suggested_label"]), "")

    @staticmethod
    def _picture(review: dict | None, row: int | None) -> str | None:
        if review is None or row is None:
            return None
        finding = next((f for f in review["findings"] if f["row"] == row), None)
        if not finding or not finding.get("thumbnail"):
            return None
        path = Path(review["folder"]) / REVIEW_FOLDER / finding["thumbnail"]
        return str(path) if path.is_file() else None

    def decide(self, action: str | None, typed: bool = False):
        """The handler of one action button for the selected row: keep, relabel (to the
        suggestion, or to the typed label), exclude, or undo (None)."""

        def handler(row, new_label, owner_token=None, profile: gr.OAuthProfile | None = None):
            owner, review = self._review(owner_token, profile)
            if row is None or review is None:
                raise refuse("Click a finding in the list first.")
            label = new_label if typed else self._suggested(review, row)
            if action == "relabel" and not typed and not label:
                raise refuse(f"row {row} has no suggested label: type one and press 'Relabel to the typed label'")
            try:
                review = self.app.decide(owner, [int(row)], action, label)
            except ValueError as e:
                raise refuse(str(e)) from None
            return finding_words(review, row), decisions_table(review)

        return handler

    def decide_shown(self, action: str):
        """The handler of a bulk action on every listed finding without a decision yet."""

        def handler(shown, owner_token=None, profile: gr.OAuthProfile | None = None):
            owner, review = self._review(owner_token, profile)
            if review is None or not shown:
                raise refuse("There are no findings listed to decide on.")
            undecided = [row for row in shown if str(row) not in review["decisions"]]
            try:
                if action == "relabel":  # each to its own suggestion; rows without one are left
                    for row in undecided:
                        if label := self._suggested(review, row):
                            review = self.app.decide(owner, [row], "relabel", label)
                else:
                    review = self.app.decide(owner, undecided, action)
            except ValueError as e:
                raise refuse(str(e)) from None
            return decisions_table(review)

        return handler

    def download(self, owner_token=None, profile: gr.OAuthProfile | None = None) -> str:
        """The review as a CSV: every finding with its decision."""
        owner = owner_of(self.app, owner_token, profile)
        try:
            if owner is None:
                raise ValueError("audit the data first: there is no audit of yours to download")
            return self.app.review_csv(owner)
        except ValueError as e:
            raise refuse(str(e)) from None


class ReviewSection(NamedTuple):
    """The section's components the Fine-tune tab wires to its own handlers."""

    train: gr.Button  # Train on the reviewed data


def review_section(app: App, audit_inputs: list, owner_token: gr.BrowserState) -> ReviewSection:
    """The review list and its actions, laid out where it is called (inside the Fine-tune tab);
    ``audit_inputs``: the CSV, zip, column dropdowns, group column and Start from."""
    rv = ReviewTab(app)
    with gr.Accordion("Data audit: wrong labels, duplicates, outliers", open=True, elem_id="audit-section"):
        gr.Markdown(
            "'Audit data' looks for rows whose label looks wrong (judged by models that never saw the row),"
            " images copied under another name, and images unlike the others. It runs as your job (its progress"
            " and Stop are in the job status below) and takes a few minutes for a few thousand rows."
        )
        with gr.Row():
            audit = gr.Button("Audit data", elem_id="audit-button")
            issue = gr.Dropdown([ALL, *ISSUES], value=ALL, label="Show", elem_id="audit-issue", min_width=160)
        summary = gr.Markdown(elem_id="audit-summary")
        gallery = gr.Gallery(
            label="Findings, most sure first (click one to review it)",
            columns=8,
            height=280,
            allow_preview=False,
            object_fit="contain",
            elem_id="audit-gallery",
        )
        with gr.Row():
            picture = gr.Image(label="Selected", interactive=False, height=220, elem_id="audit-picture", min_width=200)
            with gr.Column(min_width=280):
                selected_md = gr.Markdown("Click a finding in the list to review it.", elem_id="audit-selected")
                with gr.Row():
                    keep = gr.Button("Keep as it is", elem_id="audit-keep", min_width=100)
                    relabel = gr.Button("Relabel to the suggestion", elem_id="audit-relabel", min_width=100)
                    exclude = gr.Button("Exclude", variant="stop", elem_id="audit-exclude", min_width=100)
                    undo = gr.Button("Undo", elem_id="audit-undo", min_width=80)
                with gr.Row():
                    new_label = gr.Textbox(label="New label", elem_id="audit-new-label", min_width=160)
                    relabel_typed = gr.Button("Relabel to the typed label", elem_id="audit-relabel-typed")
        with gr.Row():
            exclude_shown = gr.Button("Exclude every listed finding without a decision", elem_id="audit-exclude-shown")
            accept_shown = gr.Button(
                "Relabel every listed label finding to its suggestion", elem_id="audit-accept-shown"
            )
        decisions = gr.Dataframe(
            headers=["row", "image", "given label", "decision", "new label"],
            label="Your decisions (applied by 'Train on the reviewed data')",
            interactive=False,
            elem_id="audit-decisions",
        )
        with gr.Row():
            download = gr.Button("Download the review (CSV)", elem_id="audit-download", min_width=160)
            download_file = gr.File(label="Review", interactive=False, min_width=200, height=100)
            train = gr.Button("Train on the reviewed data", variant="primary", elem_id="train-reviewed", min_width=160)
        shown = gr.State([])  # the rows in the list, in its order
        row = gr.State(None)  # the selected row
        shown_id = gr.State("")  # the audit the list shows

    private = {"api_visibility": "private"}
    audit.click(rv.start, [*audit_inputs, owner_token], [owner_token, summary], concurrency_limit=1,
                concurrency_id="train", **private)  # fmt: skip
    issue.change(rv.filter, [issue, owner_token], [summary, gallery, shown, row, selected_md], **private)
    gallery.select(rv.select, [shown, owner_token], [row, selected_md, picture, new_label], **private)
    for button, action, typed in ((keep, "keep", False), (relabel, "relabel", False), (exclude, "exclude", False),
                                  (undo, None, False), (relabel_typed, "relabel", True)):  # fmt: skip
        button.click(rv.decide(action, typed), [row, new_label, owner_token], [selected_md, decisions], **private)
    exclude_shown.click(rv.decide_shown("exclude"), [shown, owner_token], decisions, **private)
    accept_shown.click(rv.decide_shown("relabel"), [shown, owner_token], decisions, **private)
    download.click(rv.download, [owner_token], download_file, **private)
    timer = gr.Timer(1.0)
    timer.tick(rv.poll, [shown_id, issue, owner_token], [summary, gallery, shown, decisions, selected_md, shown_id],
               queue=False, show_progress="hidden", **private)  # fmt: skip
    return ReviewSection(train)
