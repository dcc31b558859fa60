"""The serving path: ONNX Runtime agrees with PyTorch eager, one encoder pass gives the answer,
the explanation and the modality contributions, concurrent calls are batched."""

import copy
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmdemo.datasets.sortofclevr import PHRASINGS, questions, random_scene, render
from mmdemo.inference.engines import MicroBatcher, Rows
from mmdemo.inference.predictor import Predictor
from mmdemo.model.classifier import build_model

from ..conftest import tiny_config

CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "sort-of-clevr"
WORDS = "what where is the a red cat dog bird on left right of in picture colour shape big small".split()


def _random_inputs(n: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 12)))) for _ in range(n)]
    return images, texts


def _assert_agree(eager: list, fast: list) -> None:
    """Same answer for every sample; probabilities (all three modality rows) within 0.01."""
    assert len(eager) == len(fast)
    worst = 0.0
    for e, f in zip(eager, fast):
        assert e.prediction.label == f.prediction.label, (e.prediction.scores, f.prediction.scores)
        for row in e.contributions:
            diffs = [abs(e.contributions[row][k] - f.contributions[row][k]) for k in e.contributions[row]]
            worst = max(worst, *diffs)
        heat_e, heat_f = e.prediction.explanation.heatmap, f.prediction.explanation.heatmap
        assert torch.allclose(heat_e, heat_f, atol=1e-3)
        assert e.prediction.explanation.words == f.prediction.explanation.words
    assert worst <= 0.01, worst


def _in_batches(predictor: Predictor, images, texts, size: int = 50):
    out = []
    for i in range(0, len(images), size):
        out += predictor.analyse_batch(images[i : i + size], texts[i : i + size])
    return out


def test_onnxruntime_agrees_with_eager_on_200_inputs_tiny_model():
    torch.manual_seed(0)
    model = build_model(tiny_config())
    eager = Predictor(copy.deepcopy(model), "cpu", backend="torch")  # a Predictor owns (folds) its model
    fast = Predictor(model, "cpu", backend="onnxruntime")
    assert (eager.backend, fast.backend) == ("torch", "onnxruntime")
    images, texts = _random_inputs(200, 40)
    _assert_agree(_in_batches(eager, images, texts), _in_batches(fast, images, texts))


@pytest.mark.slow  # the shipped weights on both engines; the fast subset keeps the tiny model's 200 inputs
def test_onnxruntime_agrees_with_eager_on_200_sort_of_clevr_questions():
    eager = Predictor.from_checkpoint(CHECKPOINT, "cpu", backend="torch")
    fast = Predictor.from_checkpoint(CHECKPOINT, "cpu", backend="onnxruntime")
    rng = np.random.default_rng(11)
    images, texts = [], []
    for _ in range(20):
        scene = random_scene(rng)
        for q in questions(scene, rng, PHRASINGS, per_kind=5):
            images.append(render(scene))
            texts.append(q["text"])
    assert len(images) == 200
    _assert_agree(_in_batches(eager, images, texts), _in_batches(fast, images, texts))


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_one_pass_matches_the_model_asked_separately(backend):
    """analyse's rows equal the classifier's own forward with a modality dropped."""
    torch.manual_seed(1)
    model = build_model(tiny_config()).eval()
    predictor = Predictor(copy.deepcopy(model), "cpu", backend=backend)
    images, texts = _random_inputs(3, 32, seed=2)
    results = predictor.analyse_batch(images, texts)
    pixels = predictor.pixels(images)
    tb = predictor.tokens(texts)
    with torch.no_grad():
        for name, drop_image, drop_text in (
            ("both", None, None),
            ("image only", None, torch.ones(3, dtype=torch.bool)),
            ("text only", torch.ones(3, dtype=torch.bool), None),
        ):
            logits = model(pixels, tb.input_ids, tb.attention_mask, drop_image, drop_text).logits
            probs = logits.softmax(-1)
            for i, result in enumerate(results):
                got = torch.tensor(list(result.contributions[name].values()))
                assert torch.allclose(got, probs[i], atol=1e-5), name
    single = predictor.predict_batch(images, texts)
    for s, r in zip(single, results):
        assert s.label == r.prediction.label
        assert torch.allclose(s.explanation.heatmap, r.prediction.explanation.heatmap, atol=1e-5)


def test_gradient_explanations_come_with_the_same_contributions():
    torch.manual_seed(2)
    predictor = Predictor(build_model(tiny_config()), "cpu")
    images, texts = _random_inputs(2, 32, seed=3)
    raw = predictor.analyse_batch(images, texts, "raw")
    grad = predictor.analyse_batch(images, texts, "gradient")
    for r, g in zip(raw, grad):
        assert g.prediction.explanation.method == "gradient"
        assert r.prediction.label == g.prediction.label
        for row in r.contributions:
            for k in r.contributions[row]:
                assert abs(r.contributions[row][k] - g.contributions[row][k]) < 1e-4


def test_plain_rows_are_the_model_forward():
    torch.manual_seed(3)
    model = build_model(tiny_config()).eval()
    predictor = Predictor(copy.deepcopy(model), "cpu", backend="onnxruntime")
    images, texts = _random_inputs(4, 32, seed=4)
    pixels, tb = predictor.pixels(images), predictor.tokens(texts)
    with torch.no_grad():
        expected = model(pixels, tb.input_ids, tb.attention_mask)
    got = predictor.forward(pixels, tb.input_ids, tb.attention_mask)
    assert torch.allclose(got.logits, expected.logits, atol=1e-4)
    for a, b in zip(got.cross_attention + got.text_attention, expected.cross_attention + expected.text_attention):
        assert torch.allclose(a, b, atol=1e-5)
    rows = Rows.with_modalities(pixels, tb.input_ids, tb.attention_mask)
    assert rows.image_index.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 4, 4, 4]


def test_concurrent_calls_share_batches_and_errors_stay_with_their_caller():
    calls = []
    started = threading.Event()

    def run_batch(items, key):
        calls.append(list(items))
        started.wait(5)  # the first batch holds the engine while the others queue
        if any(x < 0 for x in items):
            raise ValueError(f"negative input in {items}")
        return [x * 10 for x in items]

    batcher = MicroBatcher(run_batch, max_batch=8)
    results, errors = {}, {}

    def call(x):
        try:
            results[x] = batcher(x)
        except ValueError as e:
            errors[x] = str(e)

    threads = [threading.Thread(target=call, args=(x,)) for x in [1, 2, 3, -4, 5]]
    threads[0].start()
    while not calls:
        pass
    for t in threads[1:]:
        t.start()
    started.set()
    for t in threads:
        t.join(10)
    assert results == {1: 10, 2: 20, 3: 30, 5: 50}
    assert list(errors) == [-4] and "negative input in [-4]" in errors[-4]
    assert calls[0] == [1]
    assert len(calls[1]) > 1  # the queued requests ran together (then one by one to isolate the bad one)


def test_analyse_from_threads_returns_each_callers_answer():
    torch.manual_seed(4)
    predictor = Predictor(build_model(tiny_config()), "cpu")
    images, texts = _random_inputs(12, 32, seed=5)
    expected = [a.prediction.scores for a in predictor.analyse_batch(images, texts)]
    got = [None] * 12

    def call(i):
        got[i] = predictor.analyse(images[i], texts[i]).prediction.scores

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for e, g in zip(expected, got):
        assert g is not None and max(abs(e[k] - g[k]) for k in e) < 1e-4
    with pytest.raises(ValueError, match="empty"):
        predictor.analyse(images[0], "  ")
