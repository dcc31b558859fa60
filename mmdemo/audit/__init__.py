"""The data audit before training (``python -m mmdemo audit``): rows whose label looks wrong,
duplicated and near-identical images, test images that also sit in the training data, and
outlying images. It sits beside training/ and evaluation/: it reads a Dataset (datasets/) and
the cached frozen encoder features (training/features.py), and the app and the CLI call
``run_audit`` (core.py)."""
