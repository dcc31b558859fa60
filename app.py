"""mmdemo's web app (Hugging Face Spaces, Docker, or `python app.py`).

`demo` is built at import (Spaces looks for it); weights load on the first request, or in a
background warm-up when launched from here. Limits and folders: mmdemo/limits.py,
mmdemo/ui/serve.py and the README's "Security and limits".
"""

import logging
import os
import threading

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from mmdemo.ui import App, create_demo  # noqa: E402
from mmdemo.ui.serve import launch  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

app = App()
demo = create_demo(app)

if __name__ == "__main__":
    default = app.default_checkpoint()
    if default:  # load the default model while the server starts
        threading.Thread(target=app.registry.predictor, args=(default,), daemon=True).start()
    launch(
        demo, app, os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    )
