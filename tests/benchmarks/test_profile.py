"""``bench-app --stages``: /predict's handler timed stage by stage in process (a tiny model)."""

import pytest

pytest.importorskip("gradio")

from mmdemo.benchmarks.stages import stages  # noqa: E402

from ..browser import make_app  # noqa: E402


def test_stages_cover_the_forward_the_pictures_and_gradio(tmp_path):
    app = make_app(tmp_path)
    result = stages(requests=3, app=app)
    names = set(result["stages_ms"])
    assert result["requests"] == 3 and result["torch_threads"] == 1
    assert any(name.startswith("analyse / forward") and "3 rows" in name for name in names)
    assert {"overlay picture", "word maps picture", "charts / serialise", "gradio postprocess / Image"} <= names
    handler = result["stages_ms"]["handler (all of the above but gradio)"]["p50"]
    assert handler >= result["stages_ms"]["overlay picture"]["p50"] > 0
