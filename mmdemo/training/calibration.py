"""Temperature scaling (Guo et al., 2017): one scalar T fitted on the validation split after
training, so that softmax(logits / T) says how often the model is right.

The model's ranking of answers does not change (T > 0 divides every logit), only how sure it
says it is: T > 1 softens an over-confident model, T < 1 sharpens an under-confident one
(modality dropout and early stopping leave the model under-confident on clean inputs).
T is stored in ``ModelConfig.temperature`` (config.json) and applied by ``inference.predictor.Predictor``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..metrics import reliability

T_MIN, T_MAX = 0.05, 20.0


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The T in [T_MIN, T_MAX] minimising the negative log-likelihood of ``targets`` (N,)
    under softmax(``logits`` (N, L) / T); rows with target -1 (unknown label) are ignored.
    LBFGS on log T, so T stays positive."""
    known = targets >= 0
    logits, targets = logits[known].detach().float(), targets[known]
    if len(targets) == 0:
        return 1.0
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(nll)
    t = float(log_t.detach().exp())
    return min(max(t, T_MIN), T_MAX) if t == t else 1.0  # NaN -> no scaling


def calibration_report(logits: torch.Tensor, targets: torch.Tensor, temperature: float, bins: int = 15) -> dict:
    """ECE and reliability bins before (T = 1) and after scaling by ``temperature``."""
    known = targets >= 0
    logits, targets = logits[known].float(), targets[known]
    result = {"temperature": temperature, "n": len(targets)}
    for name, t in (("before", 1.0), ("after", temperature)):
        probs = (logits / t).softmax(-1)
        confidence, predicted = probs.max(-1)
        r = reliability(confidence.tolist(), (predicted == targets).tolist(), bins)
        result[f"ece_{name}"] = r["ece"]
        result[f"mean_confidence_{name}"] = float(confidence.mean()) if len(targets) else 0.0
        result[f"reliability_{name}"] = r
    return result
