"""mmdemo's web app (Hugging Face Spaces, Docker, or `python app.py`).

`demo` is built at import (Spaces looks for it); weights load on the first request, or in a
background warm-up when launched from here.
"""

import os
import threading

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from mmdemo.ui import App, create_demo  # noqa: E402

app = App()
demo = create_demo(app)

if __name__ == "__main__":
    default = app.default_checkpoint()
    if default:  # load the default model while the server starts
        threading.Thread(target=app.registry.predictor, args=(default,), daemon=True).start()
    # a bounded queue: past MMDEMO_QUEUE_SIZE waiting requests, a call is refused at once with
    # "Queue is full" (HTTP 503) instead of waiting without bound
    queue_size = int(os.environ.get("MMDEMO_QUEUE_SIZE", "64"))
    demo.queue(max_size=queue_size, default_concurrency_limit=1).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        ssr_mode=False,  # advisory for the SSR proxy of Gradio 6.27-6.31
        max_file_size="200mb",
        share=False,
        show_error=False,
        footer_links=["api"],
    )
