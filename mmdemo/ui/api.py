"""The app's named API endpoints, declared here: what a gradio_client (or raw HTTP) caller can
call, with the parameter names, order, types and defaults the API page shows.

/predict returns component values (the pictures, the charts, the answer as a Label), which
gr.api cannot express: it is one event without a trigger (``gr.on([])``) on the Predict tab's
own components, which type its parameters and outputs as the page shows them. It has no
validator, unlike the page's Predict button: Gradio runs a validator while admitting a call,
within the event's concurrency limit, so a burst of API calls would wait outside the bounded
queue instead of being refused ("queue full") at once; the handler gives the same messages for
a missing image or question. The owner token comes last (``gr.OAuthProfile`` when the Space
signs visitors in; ui/identity.py).
"""

import gradio as gr

from .common import api_example, api_type, file_example
from .predict import PredictView

PREDICT_DESCRIPTION = (
    "Answer a question about an image; returns the answer's probabilities, the explanation (tokens, token_scores, "
    "heatmap, peak_xy) and the views the app shows."
)


def declare_api(predict: PredictView) -> None:
    """Declare the named endpoints (inside the Blocks)."""
    app = predict.tab.app
    examples = app.examples()
    if examples:  # the API page's sample code uses a shipped example, so it runs as it is
        api_example(predict.image, file_example(examples[0][0]))
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
