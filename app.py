"""mmdemo's web app (Hugging Face Spaces, Docker, or `python app.py`).

`demo` is built at import (Spaces looks for it); weights load on the first request, or in a
background warm-up when launched from here. Fine-tune jobs run in worker programs of their own
(mmdemo/app/worker.py), which never import this script. SIGTERM stops the server cleanly: a running
job's worker is told and leaves the job resumable. Limits and folders: mmdemo/app/settings.py,
mmdemo/ui/launch.py and docs/deploy.md.
"""

import logging
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from mmdemo.ui import App, create_demo  # noqa: E402
from mmdemo.ui.launch import serve  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

app = App()
demo = create_demo(app)

if __name__ == "__main__":
    serve(demo, app)
