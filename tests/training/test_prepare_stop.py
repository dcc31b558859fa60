"""Data preparation of a large training set runs in chunks: progress with counts, and Stop ends
it between two chunks (in train.Encoded, and through a real fine-tune job's worker process)."""

import csv
import os
import re
import time

import pytest
import torch
from PIL import Image

from mmdemo.app.jobs import DataSource, JobManager
from mmdemo.app.registry import CheckpointRegistry, owner_id
from mmdemo.datasets.csv_table import Example, read_csv
from mmdemo.model.checkpoint import save_checkpoint
from mmdemo.model.classifier import build_model
from mmdemo.model.encoders import load_tokenizer
from mmdemo.model.preprocess import tokenize
from mmdemo.training.features import TEXT_CHUNK, Encoded
from mmdemo.training.settings import Stopped

from ..conftest import tiny_config

OWNER = owner_id("p" * 43)


def _texts(n: int) -> list[str]:
    # distinct texts of varied lengths, so chunks pad to different lengths
    return [f"is the square number {i} {'very ' * (i % 7)}red?" for i in range(n)]


def _examples(folder, n_texts: int) -> list[Example]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(4):
        Image.new("RGB", (16, 16), (255, 0, 0) if i % 2 == 0 else (0, 0, 255)).save(folder / f"{i}.png")
        paths.append(folder / f"{i}.png")
    return [
        Example(i + 2, paths[i % 4], text, "red" if i % 2 == 0 else "blue") for i, text in enumerate(_texts(n_texts))
    ]


def test_texts_are_tokenized_in_chunks_with_counts_as_one_call_would(tmp_path):
    model = build_model(tiny_config(labels=["blue", "red"]))
    examples = _examples(tmp_path, 2 * TEXT_CHUNK + 100)
    events = []
    encoded = Encoded(model, examples, torch.device("cpu"), events.append)
    counts = [(e["done"], e["total"]) for e in events if e["stage"] == "tokenize texts"]
    n = len(examples)
    assert counts == [(TEXT_CHUNK, n), (2 * TEXT_CHUNK, n), (n, n)]
    whole = tokenize(load_tokenizer(model.config.text_model), _texts(n), model.config.max_tokens)
    assert torch.equal(encoded.input_ids, whole.input_ids)
    assert torch.equal(encoded.attention_mask, whole.attention_mask)


@pytest.mark.parametrize(
    "frozen, stage, words",
    [([], "tokenize texts", "reading the questions"), (["text_encoder"], "encode texts", "encoding the questions")],
)
def test_stop_ends_preparation_between_chunks(tmp_path, frozen, stage, words):
    model = build_model(tiny_config(labels=["blue", "red"], frozen=frozen))
    examples = _examples(tmp_path, 3 * TEXT_CHUNK)
    events = []
    with pytest.raises(Stopped, match=rf"stopped while preparing the data \({words} [\d,]+/3,072\)"):
        Encoded(
            model, examples, torch.device("cpu"), events.append, should_stop=lambda: bool(events[-1]["stage"] == stage)
        )
    assert [e for e in events if e["stage"] == stage] == [events[-1]]  # stopped after its first chunk


def test_a_job_with_many_distinct_texts_shows_counts_and_stops_while_preparing(tmp_path):
    shipped = tmp_path / "shipped"
    save_checkpoint(build_model(tiny_config(labels=["blue", "red"], frozen=["text_encoder"])), shipped / "base")
    registry = CheckpointRegistry(tmp_path / "mine", shipped)
    jobs = JobManager(registry, tmp_path / "jobs")
    up = tmp_path / "up"
    examples = _examples(up, 40_000)
    with open(up / "data.csv", "w", newline="") as f:
        csv.writer(f).writerows(
            [["image", "text", "label"], *[[os.path.basename(e.image), e.text, e.label] for e in examples]]
        )
    dataset = read_csv(up / "data.csv", image_root=up, confine=True)
    overrides = {"epochs": 1, "batch_size": 64, "freeze": ["text_encoder"]}  # set values; the recipe fills the rest
    jobs.start(OWNER, dataset, DataSource(up, up / "data.csv"), overrides, "many-texts", base="base")
    deadline, messages = time.monotonic() + 120, []
    while time.monotonic() < deadline:
        status = jobs.status(OWNER)
        messages.append(status["message"])
        if "questions" in status["message"] or status["state"] not in ("queued", "preparing"):
            break
        time.sleep(0.05)
    assert status["state"] == "preparing", messages  # 40,000 texts: still preparing
    assert re.search(r"preparing: (reading|encoding) the questions [\d,]+/[\d,]+", status["message"]), status
    jobs.stop(OWNER)
    status = jobs.wait(OWNER, 60)
    jobs.close()
    assert status["state"] == "stopped", status
    # the worker stopped itself between two chunks (not terminated), and says where it was
    assert "stopped while preparing the data (" in status["message"] and "questions" in status["message"], status
    assert "many-texts" not in registry.names(OWNER)
