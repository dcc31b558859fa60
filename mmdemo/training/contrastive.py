"""The image–text contrastive loss (``train --contrastive W``): a training-time extra term.

A symmetric InfoNCE loss over the rows of a batch, as CLIP's and ALBEF's image–text
contrastive loss: each row's text should be closer to its own image than to the other images
of the batch, and each image closer to its rows' texts than to the texts of other images
(in-batch negatives, a learned temperature). Rows that share an image are not negatives of
each other: a batch keeps the rows of one image together, and a second question about the
same picture is no mismatch.

What is compared is what the fusion trains: an image is the mean of its region tokens after
the region self-attention layers (``CrossModalFusion.encode_regions``), a text the mean of its
tokens after the fusion's text projection (before any cross-attention, so it has not seen the
image). Each goes through a small linear projection to a shared space. The projections and
the temperature live here, outside the classifier: the optimizer trains them, the resume
state keeps them, the checkpoint does not (its state-dict keys are those of a run without
the loss).

Whether it helps, measured: ``python -m mmdemo bench-contrastive`` (docs/training.md).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..model.fusion import CrossModalFusion

INITIAL_TEMPERATURE = 0.07  # CLIP's
MAX_LOGIT_SCALE = 100.0  # CLIP clips 1 / temperature here, so the loss cannot sharpen without bound


class Pooled(NamedTuple):
    """One vector per distinct image and one per row's text, in the fusion's width."""

    image: torch.Tensor  # (U, D) mean of the region tokens
    text: torch.Tensor  # (B, D) mean of the projected text tokens


def pooled(
    fusion: CrossModalFusion,
    feature_map: torch.Tensor,
    pixels: torch.Tensor | None,
    text_states: torch.Tensor,
    text_mask: torch.Tensor,
) -> Pooled:
    """The fusion's trained image and text representations, pooled: feature_map (U, C, h, w)
    and pixels (U, 3, S, S) as ``encoded.batch`` gives them, text_states (B, T, E), text_mask
    (B, T). The region layers run a second time for these (with their own dropout draw): the
    classifier's forward is left as it is."""
    regions = fusion.encode_regions(feature_map, pixels, missing=False)  # (U, R, D)
    tokens = fusion.text_proj(text_states)  # (B, T, D)
    weights = text_mask[..., None].to(tokens.dtype)
    text = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, D)
    return Pooled(regions.mean(1), text)


def info_nce(
    image: torch.Tensor, text: torch.Tensor, image_index: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Per-row symmetric InfoNCE loss (B,): image (U, D) one per distinct image, text (B, D)
    one per row, image_index (B,) the image of each row, logit_scale a scalar (log of 1 /
    temperature).

    - text -> image: row j's text picks its image among the U distinct images of the batch;
    - image -> text: row j's image picks row j's text among the texts of row j and of the rows
      of other images (the other rows of its own image are left out, not counted as negatives).
    The row's loss is the mean of the two; with one row per image this is CLIP's loss."""
    with torch.autocast(image.device.type, enabled=False):  # similarities in fp32 under a GPU's autocast
        image = F.normalize(image.float(), dim=-1)
        text = F.normalize(text.float(), dim=-1)
        scale = logit_scale.float().exp().clamp(max=MAX_LOGIT_SCALE)
        similarity = scale * text @ image.T  # (B, U): [j, u] = row j's text against image u
    text_to_image = F.cross_entropy(similarity, image_index, reduction="none")  # (B,)
    b = len(image_index)
    image_rows = similarity.T[image_index]  # (B, B): [j, k] = row j's image against row k's text
    same_image = image_index[:, None] == image_index[None, :]
    others_of_its_image = same_image & ~torch.eye(b, dtype=torch.bool, device=same_image.device)
    image_rows = image_rows.masked_fill(others_of_its_image, float("-inf"))
    image_to_text = F.cross_entropy(image_rows, torch.arange(b, device=image_rows.device), reduction="none")  # (B,)
    return (text_to_image + image_to_text) / 2


class ContrastiveLoss(nn.Module):
    """The projections to the shared space and the learned temperature; ``forward`` gives the
    per-row loss of a batch (B,)."""

    def __init__(self, dim: int, shared_dim: int | None = None):
        super().__init__()
        shared_dim = shared_dim or dim
        self.image_proj = nn.Linear(dim, shared_dim)
        self.text_proj = nn.Linear(dim, shared_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / INITIAL_TEMPERATURE)))

    def forward(
        self,
        fusion: CrossModalFusion,
        feature_map: torch.Tensor,
        pixels: torch.Tensor | None,
        text_states: torch.Tensor,
        text_mask: torch.Tensor,
        image_index: torch.Tensor,
    ) -> torch.Tensor:
        """Arguments as ``encoded.batch`` returns them (image_index (B,): each row's feature map)."""
        vectors = pooled(fusion, feature_map, pixels, text_states, text_mask)
        return info_nce(self.image_proj(vectors.image), self.text_proj(vectors.text), image_index, self.logit_scale)

    @property
    def temperature(self) -> float:
        return 1 / min(math.exp(float(self.logit_scale.detach())), MAX_LOGIT_SCALE)

    def parameter_groups(self, lr: float) -> list[dict]:
        """Optimizer groups: the projections at ``lr``; the temperature without weight decay
        (as in CLIP: decay would pull it towards 1, whatever the data says)."""
        projections = list(self.image_proj.parameters()) + list(self.text_proj.parameters())
        return [{"params": projections, "lr": lr}, {"params": [self.logit_scale], "lr": lr, "weight_decay": 0.0}]
