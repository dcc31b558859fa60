"""mmdemo: try, explain and fine-tune a multimodal (image + text) classifier.

The few names most code needs, importable from here::

    from mmdemo import Predictor, finetune, FinetuneRequest, read_csv

They are resolved on first use, so ``import mmdemo`` loads no torch, no weights and touches no
network. The subpackages, lowest first (each imports only from those below it): ``model``,
``explain`` and ``datasets``, ``inference``, ``training``, ``evaluation``, ``app``, ``ui``,
``benchmarks``, ``cli``; small helpers used everywhere (``device``, ``imaging``, ``metrics``,
``folders``) sit at the top.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "Predictor": "mmdemo.inference.predictor",
    "Prediction": "mmdemo.inference.predictor",
    "load_checkpoint": "mmdemo.model.checkpoint",
    "save_checkpoint": "mmdemo.model.checkpoint",
    "ModelConfig": "mmdemo.model.classifier",
    "build_model": "mmdemo.model.classifier",
    "Dataset": "mmdemo.datasets.csv_table",
    "read_csv": "mmdemo.datasets.csv_table",
    "finetune": "mmdemo.training.finetune",
    "FinetuneRequest": "mmdemo.training.finetune",
    "TrainSettings": "mmdemo.training.settings",
    "decode_image": "mmdemo.imaging",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'mmdemo' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
