"""mmdemo's web app (Hugging Face Spaces, Docker, or `python app.py`).

`demo` is built at import (Spaces looks for it); weights load on the first request, or in a
background warm-up when launched from here. Limits and folders: mmdemo/limits.py and the
README's "Security and limits".
"""

import logging
import os
import threading

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from mmdemo.ui import App, create_demo  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

app = App()
demo = create_demo(app)

# bounded: sessions kept in memory (each holds a copy of the page's config), events waiting
SESSION_CAPACITY = int(os.environ.get("MMDEMO_SESSION_CAPACITY", "300"))
QUEUE_SIZE = int(os.environ.get("MMDEMO_QUEUE_SIZE", "64"))


def launch(server_name: str, server_port: int, **kwargs):
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1).launch(
        server_name=server_name,
        server_port=server_port,
        ssr_mode=False,  # advisory for the SSR proxy of Gradio 6.27-6.31
        max_file_size=f"{app.limits.max_upload_mb}mb",
        state_session_capacity=SESSION_CAPACITY,
        share=False,
        show_error=False,
        footer_links=["api"],
        **kwargs,
    )


if __name__ == "__main__":
    default = app.default_checkpoint()
    if default:  # load the default model while the server starts
        threading.Thread(target=app.registry.predictor, args=(default,), daemon=True).start()
    launch(os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
