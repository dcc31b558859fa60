"""Faithfulness of heatmaps: do the regions a heatmap calls important matter to the answer?

- deletion (Petsiuk et al. 2018, RISE): blank the heatmap's cells from hottest to coldest and
  follow the probability of the original answer; a faithful heatmap makes it fall fast (small
  area under the curve), faster than blanking the cells in a random order;
- insertion: start from a blank image and put the cells back, hottest first; a faithful
  heatmap makes the probability rise fast (large area);
- model randomisation (Adebayo et al. 2018): re-initialise the fusion weights and explain the
  same inputs again; a heatmap that still looks the same (high rank correlation) explains the
  image, not the model.

Pure functions over images and heatmaps; the model is reached only through ``probs_fn``
(list of images, list of texts -> (B, L) probabilities), or, for a data set
(``dataset_faithfulness``), through two predictors passed in: the trained one and the same
model with its fusion re-initialised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

ProbsFn = Callable[[list, list], np.ndarray]


def blank_colour(image: Image.Image) -> tuple[int, ...]:
    """The colour blanked cells get: the image's per-channel median (a scene's background)."""
    return tuple(int(v) for v in np.median(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0))


def cell_boxes(grid: tuple[int, int], size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Pixel box (x0, y0, x1, y1) of each heatmap cell, row-major, for an image of ``size``."""
    h, w = grid
    width, height = size
    xs = np.linspace(0, width, w + 1).round().astype(int)
    ys = np.linspace(0, height, h + 1).round().astype(int)
    return [(int(xs[j]), int(ys[i]), int(xs[j + 1]), int(ys[i + 1])) for i in range(h) for j in range(w)]


def masked_images(
    image: Image.Image, grid: tuple[int, int], order: list[int], steps: int, insert: bool = False
) -> list[Image.Image]:
    """``steps + 1`` images: 0, 1/steps, ..., all of the cells in ``order`` blanked (deletion) or
    put back onto a blank image (insertion)."""
    image = image.convert("RGB")
    base = np.asarray(image).copy()
    fill = np.array(blank_colour(image), dtype=np.uint8)
    boxes = cell_boxes(grid, image.size)
    counts = np.linspace(0, len(order), steps + 1).round().astype(int)
    images = []
    for k in counts:
        a = np.empty_like(base)
        a[:] = fill if insert else base
        for cell in order[:k]:
            x0, y0, x1, y1 = boxes[cell]
            a[y0:y1, x0:x1] = base[y0:y1, x0:x1] if insert else fill
        images.append(Image.fromarray(a))
    return images


def area(curve: np.ndarray) -> float:
    """Normalised area under a curve sampled at equal steps in [0, 1] (trapezoids)."""
    curve = np.asarray(curve, dtype=float)
    return float(((curve[1:] + curve[:-1]) / 2).mean()) if len(curve) > 1 else float(curve[0])


def curves(
    probs_fn: ProbsFn,
    image: Image.Image,
    text: str,
    heatmap: torch.Tensor,
    label_index: int,
    steps: int = 16,
    random_orders: int = 3,
    seed: int = 0,
) -> dict:
    """Deletion (hottest first and random order) and insertion curves of one prediction: the
    probability of ``label_index`` after each step, and their areas (``random_orders`` = 0:
    no random-order curve, for a caller that already has it)."""
    grid = tuple(heatmap.shape)
    hot = [int(i) for i in torch.argsort(heatmap.flatten(), descending=True, stable=True)]
    rng = np.random.default_rng(seed)
    orders = [("deletion", hot, False), ("insertion", hot, True)]
    orders += [(f"random{r}", list(rng.permutation(len(hot))), False) for r in range(random_orders)]
    images = [im for _, order, insert in orders for im in masked_images(image, grid, order, steps, insert)]
    probs = probs_fn(images, [text] * len(images))[:, label_index].reshape(len(orders), steps + 1)
    fractions = np.linspace(0, 1, steps + 1)
    result = {
        "fractions": fractions.round(4).tolist(),
        "deletion": probs[0].round(4).tolist(),
        "insertion": probs[1].round(4).tolist(),
        "deletion_auc": round(area(probs[0]), 4),
        "insertion_auc": round(area(probs[1]), 4),
    }
    if random_orders:
        random_curve = probs[2:].mean(0)
        result["random_deletion"] = random_curve.round(4).tolist()
        result["random_deletion_auc"] = round(area(random_curve), 4)
    return result


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two heatmaps (ties broken by position)."""
    ra = torch.argsort(torch.argsort(a.flatten(), stable=True)).double()
    rb = torch.argsort(torch.argsort(b.flatten(), stable=True)).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / denom) if denom > 0 else 0.0


def reinitialise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Re-initialise every parameter of ``module`` in place (the model-randomisation test's
    cascade, all at once): layers through their own ``reset_parameters``, free parameters
    (learned tokens, additive attention vectors) drawn again from a normal of their own scale."""
    torch.manual_seed(seed)
    reset = set()
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
            reset.update(id(p) for p in m.parameters(recurse=False))
    with torch.no_grad():
        for p in module.parameters():
            if id(p) not in reset:
                p.normal_(0.0, float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 0.02)
    return module


def sample_indices(total: int, n: int) -> list[int]:
    """``n`` row indices spread evenly over ``total`` rows (all of them when n >= total), so a
    bounded sample covers the whole set (every question kind of a benchmark), not its start."""
    if n <= 0 or total <= 0:
        return []
    if n >= total:
        return list(range(total))
    return sorted({int(i) for i in np.linspace(0, total - 1, n).round()})


def dataset_faithfulness(
    predictor,
    randomised,
    images: Sequence[Image.Image],
    texts: Sequence[str],
    methods: Sequence[str],
    steps: int = 8,
    random_orders: int = 2,
    batch_size: int = 16,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Per explanation method, means over the rows: deletion area (hottest first, and in random
    order), insertion area, and the rank correlation between each heatmap and the heatmap of
    ``randomised`` (the same model, fusion re-initialised: Adebayo et al. 2018; near 0 means the
    heatmap depends on what the model learned, near 1 that it would look the same untrained).

    ``predictor`` and ``randomised`` are service Predictors (``predict_batch``,
    ``probabilities``, ``labels``); curves use the answer each row's prediction gives.
    ``progress(what, done, total)`` after each row's curves."""
    progress = progress or (lambda what, done, total: None)
    images, texts = list(images), list(texts)
    result: dict = {"rows": len(images), "steps": steps, "random_orders": random_orders}
    random_aucs: dict[tuple[int, str], float] = {}
    for method in methods:
        original, shuffled = [], []
        progress(f"explaining the sampled rows with {method} attention", 0, len(images))
        for start in range(0, len(images), batch_size):
            chunk = slice(start, start + batch_size)
            original += predictor.predict_batch(images[chunk], texts[chunk], method)
            shuffled += randomised.predict_batch(images[chunk], texts[chunk], method)
        measured = []
        for i, (image, text, p) in enumerate(zip(images, texts, original)):
            # the random order does not depend on the method: measured once per row and answer
            known = random_aucs.get((i, p.label))
            m = curves(
                predictor.probabilities,
                image,
                text,
                p.explanation.heatmap,
                predictor.labels.index(p.label),
                steps,
                0 if known is not None else random_orders,
                seed=i,
            )
            m.setdefault("random_deletion_auc", known)
            random_aucs[(i, p.label)] = m["random_deletion_auc"]
            measured.append(m)
            progress(f"measuring how faithful the {method} heatmaps are", i + 1, len(images))
        correlations = [
            rank_correlation(a.explanation.heatmap, b.explanation.heatmap) for a, b in zip(original, shuffled)
        ]

        def mean(values: list[float]) -> float | None:
            return round(float(np.mean(values)), 4) if values else None

        result[method] = {
            "deletion_auc": mean([m["deletion_auc"] for m in measured]),
            "random_deletion_auc": mean([m["random_deletion_auc"] for m in measured]),
            "insertion_auc": mean([m["insertion_auc"] for m in measured]),
            "randomisation_rank_correlation": mean(correlations),
        }
    return result
