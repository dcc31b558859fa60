"""Every named API endpoint of the app, declared here and nowhere else: what a gradio_client (or
raw HTTP) caller can call, with the parameter names, order, types and defaults the API page shows.

- /preflight, /start_finetune, /resume_finetune, /stop_finetune, /finetune_status and
  /delete_checkpoint take and return plain values (files as Gradio's FileData, strings, numbers,
  JSON): they are ``gr.api`` endpoints, typed by the signatures of ``FinetuneAPI``'s methods,
  which call the Fine-tune tab's handlers (ui/finetune.py). ``/start_finetune`` keeps the
  13 positional arguments of its documented call (docs/api.md); later ones came last, with defaults.
- /predict returns component values (the pictures, the charts, the answer as a Label), which
  gr.api cannot express: it is one event without a trigger (``gr.on([])``) on the Predict tab's
  own components, which type its parameters and outputs as the page shows them. It has no
  validator, unlike the page's Predict button: Gradio runs a validator while admitting a call,
  within the event's concurrency limit, so a burst of API calls would wait outside the bounded
  queue instead of being refused ("queue full") at once; the handler gives the same messages for
  a missing image or question.

gr.api hands its function the values as they were sent, without a component's preprocessing, so
``FinetuneAPI`` checks them as the page's components did: a number as the API page names it
(``number_problem``), within the bounds of the form's field it stands for, whole where the field
is; a file only as the FileData of an upload (whose path Gradio has checked), of the accepted
type; a name as text. A parameter whose default is None is typed without "None |" (as the page's
components typed it): optional, and None means "not set". The owner token comes last
(``gr.OAuthProfile`` when the Space signs visitors in; ui/identity.py).
"""

# no ``from __future__ import annotations``: gr.api reads a function's return type from its
# signature as written, and a string there would type every output as "Any"
import functools
import inspect
import os
from pathlib import Path

import gradio as gr

from .common import api_example, api_type, file_example, input_error, upload_type_error
from .finetune import DEFAULT_NAME, NEW_MODEL, VALIDATION_SPLIT, FinetuneTab
from .gradio_patches import number_problem
from .predict import PredictView

PREDICT_DESCRIPTION = (
    "Answer a question about an image; returns the answer's probabilities, the explanation (tokens, token_scores, "
    "heatmap, peak_xy) and the views the app shows."
)


def _number(name: str, value, minimum: float | None = None, maximum: float | None = None, whole: bool = False):
    """``value`` as a number field took it (None: not set), or a refusal naming the parameter."""
    problem = number_problem(name, value, minimum, maximum)
    if problem:
        raise input_error("number", problem)
    return int(round(value)) if whole and value is not None else value


def _upload(name: str, value, file_types: tuple[str, ...]) -> str | None:
    """The server path of a file the caller uploaded (None: none sent). Gradio checks that a
    FileData's path lies in its upload folder before any handler runs; anything else that names a
    path is refused. A file of another type gets the page's message for it."""
    if value is None:
        return None
    meta = value.get("meta") if isinstance(value, dict) else None
    path = value.get("path") if isinstance(value, dict) else None
    if not (isinstance(meta, dict) and meta.get("_type") == "gradio.FileData" and isinstance(path, str)):
        raise input_error(
            "upload", f"{name} must be an uploaded file (gradio_client's handle_file), got {str(value)[:40]!r}"
        )
    file_name = Path(path).name.lower()
    if not any(len(file_name) > len(t) and file_name.endswith(t) for t in file_types):
        raise input_error("upload", upload_type_error(value.get("orig_name") or Path(path).name, list(file_types)))
    return path


def _text(value) -> str | None:
    """As a textbox takes it: text, or None when not sent."""
    return None if value is None else str(value)


def with_defaults(fn, **defaults):
    """``fn`` with other defaults in its signature: gr.api shows them on the API page and passes
    them for a value left out. For a default the app knows only once it is built (the server's
    time budget)."""
    signature = inspect.signature(fn)
    parameters = [
        p.replace(default=defaults[p.name]) if p.name in defaults else p for p in signature.parameters.values()
    ]

    @functools.wraps(fn)
    def endpoint(*args, **kwargs):
        return fn(*args, **kwargs)

    endpoint.__signature__ = signature.replace(parameters=parameters)
    return endpoint


class FinetuneAPI:
    """The fine-tune endpoints: each checks the values sent, then calls the tab's handler."""

    def __init__(self, tab: FinetuneTab):
        self.tab = tab

    def preflight(
        self,
        csv_file: gr.FileData,
        zip_file: gr.FileData = None,
        image_column: str = None,
        text_column: str = None,
        label_column: str = None,
        start_from: str = NEW_MODEL,
        epochs: int = None,
        learning_rate: float = None,
        batch_size: int = None,
        freeze: list[str] = None,
        class_weights: bool = None,
        time_budget_minutes: float = None,
        owner_token: str = None,
        group_column: str = None,
        profile: gr.OAuthProfile | None = None,
    ) -> str:
        """Pre-flight report of a training CSV (and the zip of its images): rows accepted and
        rejected with the reason, class counts, warnings; then the training plan: each setting
        the recipe chose from the data and the time budget (values you give win), why, and the
        estimated time on this machine. Nothing is trained.

        Args:
            start_from: '(new model)' or a checkpoint name
            freeze: the parts to keep frozen: image_encoder, text_encoder
            group_column: the column naming each row's source (a product, a patient, a photo); the rows of
                one group stay on one side of the validation split
        """
        epochs = _number("epochs", epochs, whole=True)  # the numbers first, in order, as for the page's fields
        learning_rate = _number("learning_rate", learning_rate)
        batch_size = _number("batch_size", batch_size, whole=True)
        time_budget_minutes = _number("time_budget_minutes", time_budget_minutes)
        return self.tab.preflight(
            _upload("csv_file", csv_file, (".csv",)),
            _upload("zip_file", zip_file, (".zip",)),
            image_column,
            text_column,
            label_column,
            start_from,
            epochs,
            learning_rate,
            batch_size,
            freeze,
            class_weights,
            time_budget_minutes,
            self.tab.owner(owner_token, profile),
            group_column,
        )

    def start_finetune(
        self,
        csv_file: gr.FileData,
        zip_file: gr.FileData = None,
        image_column: str = None,
        text_column: str = None,
        label_column: str = None,
        start_from: str = NEW_MODEL,
        epochs: int = None,
        learning_rate: float = None,
        batch_size: int = None,
        freeze: list[str] = None,
        validation_split: float = 0.1,
        name: str = DEFAULT_NAME,
        overwrite: bool = False,
        class_weights: bool = None,
        owner_token: str = None,
        time_budget_minutes: float = None,
        group_column: str = None,
        profile: gr.OAuthProfile | None = None,
    ) -> dict:
        """Queue a fine-tune job (one runs at a time, in its own process) and return its
        status; poll /finetune_status for progress, the plan and its time estimate, the history
        and the final report. Settings left out (None) are chosen by the recipe from the data
        and the time budget (minutes; default 10, at most the server's job time limit), as the
        CLI's `train` does for flags not given. A caller without an owner token gets one back
        as ``owner_token``: pass it to later calls to see, stop, resume, use or download what
        it trains.

        Args:
            start_from: '(new model)' or a checkpoint name
            freeze: the parts to keep frozen: image_encoder, text_encoder
            group_column: the column naming each row's source (a product, a patient, a photo); the rows of
                one group stay on one side of the validation split
        """
        epochs = _number("epochs", epochs, whole=True)  # the numbers first, in order, as for the page's fields
        learning_rate = _number("learning_rate", learning_rate)
        batch_size = _number("batch_size", batch_size, whole=True)
        validation_split = _number("validation_split", validation_split, *VALIDATION_SPLIT)
        time_budget_minutes = _number("time_budget_minutes", time_budget_minutes)
        return self.tab.start_for(
            owner_token,
            profile,
            csv_file=_upload("csv_file", csv_file, (".csv",)),
            zip_file=_upload("zip_file", zip_file, (".zip",)),
            image_col=image_column,
            text_col=text_column,
            label_col=label_column,
            base=start_from,
            epochs=epochs,
            lr=learning_rate,
            batch_size=batch_size,
            freeze=freeze,
            val_split=validation_split,
            name=_text(name),
            overwrite=overwrite,
            class_weights=class_weights,
            time_budget_minutes=time_budget_minutes,
            group_col=group_column,
        )

    def resume_finetune(
        self,
        job: str = None,
        time_budget_minutes: float = None,
        owner_token: str = None,
        profile: gr.OAuthProfile | None = None,
    ) -> dict:
        """Resume your fine-tune job that was stopped, interrupted (the server restarted) or cut
        by its time limit: it continues from its last saved epoch, for ``time_budget_minutes``
        more (default 10). ``job``: its id or checkpoint name (default: your latest job)."""
        limit = self.tab.app.limits.job_time_limit_min  # the bounds of the form's time budget
        minutes = _number("time_budget_minutes", time_budget_minutes, 1, limit)
        return self.tab.resume(self.tab.owner(owner_token, profile), _text(job), minutes)

    def stop_finetune(self, owner_token: str = None, profile: gr.OAuthProfile | None = None) -> dict:
        """Stop your fine-tune job, at any phase; the best epoch saved so far is kept."""
        return self.tab.stop(self.tab.owner(owner_token, profile))

    def finetune_status(self, owner_token: str = None, profile: gr.OAuthProfile | None = None) -> dict:
        """Your latest fine-tune job's status: state (queued with its position, preparing, running, done,
        failed, stopped, interrupted), message, progress, epoch, history, report, checkpoint."""
        return self.tab.status(self.tab.owner(owner_token, profile))

    def delete_checkpoint(
        self, name: str = DEFAULT_NAME, owner_token: str = None, profile: gr.OAuthProfile | None = None
    ) -> list[str]:
        """Delete one of your own checkpoints; returns the checkpoints you can use."""
        return self.tab.delete(_text(name), self.tab.owner(owner_token, profile))


def example_image(examples: gr.Examples, path: str):
    """The API page's sample image: a shipped example that the sample reaches from any folder.
    On a Hugging Face Space, the Space's own address of the copy the app serves (Gradio's copy in
    its file cache, which the cache sweeper keeps): anyone can run the sample, and the app
    downloads the image from itself. Elsewhere, the example's absolute path: the sample runs from
    any folder of the machine that serves the app (Gradio refuses to download from a local address,
    127.0.0.1 or a private network, so a URL would fail there); from another machine, pass an
    image of your own."""
    served = examples.dataset.samples[0][0]  # the copy's FileData: its url is relative to the app
    local = Path(path).resolve()

    def payload() -> dict:  # asked when the API page is first opened
        host = os.environ.get("SPACE_HOST", "").strip()
        if host:
            return file_example(f"https://{host}{served['url']}", served["orig_name"])
        return file_example(str(local), local.name)

    return payload


def declare_api(predict: PredictView, finetune: FinetuneTab) -> None:
    """Declare the named endpoints, in the order the API page lists them (inside the Blocks)."""
    app = finetune.app
    examples = app.examples()
    if examples and predict.examples is not None:  # the API page's sample uses a shipped example, so it runs as shown
        api_example(predict.image, example_image(predict.examples, examples[0][0]))
        api_example(predict.text, examples[0][1])
    names = ", ".join(app.registry.names())
    api_type(
        predict.checkpoint,
        {
            "type": "string",
            "additional_description": f"a checkpoint name; at start-up: {names} (fine-tuned ones are added as they"
            " are saved)",
        },
    )
    gr.on(
        [],
        predict.tab.predict,
        predict.inputs,
        predict.outputs,
        api_name="predict",
        api_description=PREDICT_DESCRIPTION,
        # several requests at once (MMDEMO_PREDICT_CONCURRENCY), with the page's: those that meet
        # in Predictor.analyse share one batch
        concurrency_limit=app.limits.predict_concurrency,
        concurrency_id="predict",
    )
    api = FinetuneAPI(finetune)
    gr.api(api.preflight, api_name="preflight")
    gr.api(api.start_finetune, api_name="start_finetune", concurrency_limit=1, concurrency_id="train")
    gr.api(
        with_defaults(api.resume_finetune, time_budget_minutes=finetune.default_minutes()),
        api_name="resume_finetune",
        concurrency_limit=1,
        concurrency_id="train",
    )
    gr.api(api.stop_finetune, api_name="stop_finetune")
    gr.api(api.finetune_status, api_name="finetune_status")
    gr.api(api.delete_checkpoint, api_name="delete_checkpoint")
