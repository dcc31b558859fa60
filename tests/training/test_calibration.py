"""Temperature scaling: a deliberately over-confident toy model gets a temperature above 1 and
a lower calibration error; an under-confident one gets a temperature below 1."""

import pytest
import torch

from mmdemo.metrics import expected_calibration_error, reliability
from mmdemo.training.calibration import calibration_report, fit_temperature


def _toy(scale: float, n: int = 2000, labels: int = 5, seed: int = 0):
    """Logits of a classifier that is right about 70 % of the time, multiplied by ``scale``."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, labels, (n,), generator=g)
    logits = torch.randn(n, labels, generator=g)
    logits[torch.arange(n), targets] += 1.5
    return logits * scale, targets


def test_temperature_lowers_ece_of_an_overconfident_model():
    logits, targets = _toy(scale=8.0)
    t = fit_temperature(logits, targets)
    report = calibration_report(logits, targets, t)
    assert t > 3
    assert report["ece_before"] > 0.15
    assert report["ece_after"] < report["ece_before"] / 3
    assert report["mean_confidence_after"] < report["mean_confidence_before"]
    # the ranking is unchanged: same predictions
    assert torch.equal((logits / t).argmax(-1), logits.argmax(-1))


def test_temperature_sharpens_an_underconfident_model():
    logits, targets = _toy(scale=0.2)
    t = fit_temperature(logits, targets)
    report = calibration_report(logits, targets, t)
    assert t < 0.5 and report["ece_after"] < report["ece_before"] / 2


def test_unknown_targets_are_ignored_and_ece_bins():
    logits, targets = _toy(scale=1.0, n=200)
    targets[:10] = -1
    assert calibration_report(logits, targets, 1.0)["n"] == 190
    # 15 equal bins: confidences 0.95 right half of the time -> ECE 0.45
    assert abs(expected_calibration_error([0.95] * 4, [True, False, True, False]) - 0.45) < 1e-9
    r = reliability([0.05, 0.99, 1.0], [False, True, True])
    assert r["count"][0] == 1 and r["count"][14] == 2 and r["ece"] < 0.05


def test_temperature_is_recovered_and_ece_measures_miscalibration():
    gen = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 5, generator=gen) * 3
    targets = torch.multinomial(true_logits.softmax(-1), 1, generator=gen)[:, 0]
    overconfident = true_logits * 2.5  # a model whose logits are 2.5x too large
    assert fit_temperature(overconfident, targets) == pytest.approx(2.5, rel=0.1)
    probs = overconfident.softmax(-1)
    conf, pred = probs.max(-1)
    before = expected_calibration_error(conf.tolist(), (pred == targets).tolist())
    conf, pred = (overconfident / 2.5).softmax(-1).max(-1)
    after = expected_calibration_error(conf.tolist(), (pred == targets).tolist())
    assert before > 0.1 and after < 0.03
