"""The simple models a user will compare the product against, on a train / test CSV pair such as
``make-real-benchmark`` writes: the majority class, and per question text logistic regression
and an RBF SVM (scikit-learn) on the raw pixels (grayscale, or RGB when the images are colour)
and on frozen EfficientNet-Lite0 features; each with its accuracy per question kind.

``python -m mmdemo make-real-benchmark --baselines`` prints them with the data set it writes.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def _pixel_mode(*csv_paths: Path) -> str:
    """Grayscale ("L") when every image is stored so (digits, photo patches), else RGB: reading
    colour images as gray would erase what a colour question asks about."""
    for csv_path in map(Path, csv_paths):
        for r in csv.DictReader(open(csv_path, newline="")):
            with Image.open(csv_path.parent / r["image"]) as image:
                if image.mode != "L":
                    return "RGB"
    return "L"


def _pixels(csv_path: Path, mode: str = "L") -> tuple[list[dict], np.ndarray]:
    rows = list(csv.DictReader(open(csv_path, newline="")))
    cache: dict[str, np.ndarray] = {}
    for r in rows:
        if r["image"] not in cache:
            cache[r["image"]] = (
                np.asarray(Image.open(csv_path.parent / r["image"]).convert(mode), np.float32).ravel() / 255
            )
    return rows, np.stack([cache[r["image"]] for r in rows])


def _frozen_features(csv_path: Path, rows: list[dict], image_size: int = 64) -> np.ndarray:
    """EfficientNet-Lite0 stride-16 feature maps (frozen, ImageNet weights) at ``image_size``
    px, flattened: the image features the recipe trains on."""
    import torch

    from ..imaging import decode_image
    from ..model.classifier import ModelConfig
    from ..model.encoders import EfficientNetLite0
    from ..model.preprocess import image_to_tensor

    config = ModelConfig(labels=["a", "b"], image_size=image_size)
    encoder = EfficientNetLite0(16)
    encoder.load_pretrained()
    encoder.eval()
    names = sorted({r["image"] for r in rows})
    features = {}
    with torch.no_grad():
        for start in range(0, len(names), 128):
            chunk = names[start : start + 128]
            px = torch.stack([image_to_tensor(decode_image(csv_path.parent / n), config) for n in chunk])
            for n, f in zip(chunk, encoder(px).flatten(1).numpy()):
                features[n] = f
    return np.stack([features[r["image"]] for r in rows])


def baselines(train_csv: Path, test_csv: Path, frozen_features: bool = True) -> dict:
    """Majority class, and per question text: logistic regression and an RBF SVM on raw pixels
    (grayscale, or RGB when the images are colour) and on frozen image features (accuracy,
    accuracy per question kind, ECE of their probabilities, seconds)."""
    import time

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from ..metrics import expected_calibration_error

    mode = _pixel_mode(Path(train_csv), Path(test_csv))
    train_rows, pixels_train = _pixels(Path(train_csv), mode)
    test_rows, pixels_test = _pixels(Path(test_csv), mode)
    labels = [r["label"] for r in train_rows]
    majority = max(set(labels), key=labels.count)
    result = {"majority": {"accuracy": float(np.mean([r["label"] == majority for r in test_rows]))}}
    inputs = {"pixels": (pixels_train, pixels_test)}
    if frozen_features:
        inputs["frozen_features"] = (
            _frozen_features(Path(train_csv), train_rows),
            _frozen_features(Path(test_csv), test_rows),
        )
    # pixels in [0, 1] as they are; the feature maps standardised (their channels' scales differ)
    models = {
        "logreg": lambda scale: make_pipeline(*scale, LogisticRegression(max_iter=2000, C=1.0)),
        "rbf_svm": lambda scale: make_pipeline(*scale, SVC(C=10, probability=True, random_state=0)),
    }
    for (model_name, make), (input_name, (x_train, x_test)) in ((m, i) for m in models.items() for i in inputs.items()):
        name = f"{model_name}_{input_name}"
        start = time.perf_counter()
        confidences, hits, per_question = [], [], {}
        for question in sorted({r["text"] for r in train_rows}):
            tr = [i for i, r in enumerate(train_rows) if r["text"] == question]
            te = [i for i, r in enumerate(test_rows) if r["text"] == question]
            y = [train_rows[i]["label"] for i in tr]
            if not te:
                continue
            if len(set(y)) < 2:
                pred, conf = [y[0]] * len(te), [1.0] * len(te)
            else:
                scale = [StandardScaler()] if input_name == "frozen_features" else []
                model = make(scale).fit(x_train[tr], y)
                proba = model.predict_proba(x_test[te])
                pred = [model.classes_[j] for j in proba.argmax(1)]
                conf = proba.max(1).tolist()
            for i, p, c in zip(te, pred, conf):
                hits.append(p == test_rows[i]["label"])
                confidences.append(c)
            kind = test_rows[te[0]].get("qtype") or question  # the question kind where the CSV names one
            per_question.setdefault(kind, []).extend(p == test_rows[i]["label"] for i, p in zip(te, pred))
        result[name] = {
            "accuracy": float(np.mean(hits)),
            "per_question": {kind: float(np.mean(h)) for kind, h in sorted(per_question.items())},
            "ece": expected_calibration_error(confidences, hits),
            "seconds": round(time.perf_counter() - start, 1),
        }
    return result
