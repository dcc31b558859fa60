"""Shared fixtures: a tiny offline model (small CNN + GRU, 32-d fusion) and its checkpoint."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from mmdemo.model.checkpoint import save_checkpoint  # noqa: E402
from mmdemo.model.classifier import ModelConfig, build_model  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


# modules whose tests start a server, a browser, a fine-tune worker or several processes: the
# fast subset (`pytest -m "not slow"`) leaves them out, as it does single tests marked slow
SLOW_MODULES = {
    "test_browser",
    "test_browser_finetune",
    "test_browser_identity",
    "test_browser_messages",
    "test_browser_predict",
    "test_browser_scope",
    "test_browser_security",
    "test_checkpoint_swap",
    "test_cli_deletion_check",
    "test_distributed",
    "test_evaluate_browser",
    "test_identity_space",
    "test_jobs",
    "test_live_messages",
    "test_predict_shards",
    "test_prepare_stop",
    "test_resume",
    "test_space_jobs",
    "test_stress_battery",
    "test_ui",
}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def tiny_config(**overrides) -> ModelConfig:
    values = dict(
        labels=["cat", "dog", "bird"],
        image_encoder="small_cnn",
        image_size=32,
        cnn_channels=[8, 16],
        text_encoder="gru",
        gru_dim=16,
        max_tokens=16,
        fusion_dim=32,
        fusion_heads=2,
        fusion_layers=2,
        region_layers=1,
        dropout=0.0,
        frozen=[],
    )
    values.update(overrides)
    return ModelConfig(**values)


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory):
    """The app's writable folder (job records, the browser secret) in a test folder."""
    folder = tmp_path_factory.mktemp("mmdemo-data")
    previous = os.environ.get("MMDEMO_DATA_DIR")
    os.environ["MMDEMO_DATA_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("MMDEMO_DATA_DIR", None)
    else:
        os.environ["MMDEMO_DATA_DIR"] = previous


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return build_model(tiny_config())


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(build_model(tiny_config()), path, training={"command": "built by tests/conftest.py"})
    return path


@pytest.fixture
def fixture_path():
    return lambda name: os.path.join(FIXTURES, name)


def write_colour_scenes(folder) -> str:
    """24 images (a coloured square on white) x 4 questions naming one of four colours, labels
    cat / dog / bird; returns the CSV path (image,text,label)."""
    import csv

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(folder, "img"), exist_ok=True)
    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "gray": (128, 128, 128)}
    rows = []
    for i in range(24):
        a = np.full((32, 32, 3), 255, np.uint8)
        y, x = rng.integers(2, 22, size=2)
        a[y : y + 8, x : x + 8] = list(colours.values())[i % 4]
        Image.fromarray(a).save(os.path.join(folder, "img", f"{i}.png"))
        for c in colours:
            rows.append([f"img/{i}.png", f"is the {c} square on the left?", ["cat", "dog", "bird"][i % 3]])
    path = os.path.join(folder, "data.csv")
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["image", "text", "label"], *rows])
    return path
