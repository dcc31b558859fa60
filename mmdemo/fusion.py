"""Cross-modal fusion: text tokens query image regions, regions relate to each other.

One ``Attention(x, context, mask)`` serves self- and cross-attention (as in vit-pytorch's
cross_vit). The softmax is computed explicitly so the weights are returned to the caller:
explanations read them from the model's output, never through hooks.

A fusion layer does, in order (pre-norm, residual):
1. text -> regions cross-attention: each word gathers what it refers to in the image;
2. text self-attention: words combine ("closest to" + "red");
3. regions -> [regions; text] attention: regions compare themselves with each other and
   with the question, which relational questions (closest, furthest, how many) need;
4. a feed-forward block on each stream.
A learned summary token is prepended to the text; the head reads its final state. It also
makes an image-only input well defined (the summary token alone queries the image), while a
text-only input replaces every region with a learned "missing image" token.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Attention(nn.Module):
    """Multi-head attention of ``x`` over ``context`` (itself when None); returns the weights."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"fusion dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, key_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        context = x if context is None else context
        b, n, d = x.shape
        h = self.heads
        q = self.to_q(x).view(b, n, h, d // h).transpose(1, 2)  # (B, H, N, d)
        k, v = self.to_kv(context).view(b, context.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)  # (B, H, M, d)
        scores = (q @ k.transpose(-1, -2)) * self.scale  # (B, H, N, M)
        if key_mask is not None:  # (B, M) True = attend
            scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1)  # (B, H, N, M), each row sums to 1
        out = self.dropout(weights) @ v  # (B, H, N, d)
        return self.out(out.transpose(1, 2).reshape(b, n, d)), weights


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, dropout: float):
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))


class FusionLayer(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm_text_cross = nn.LayerNorm(dim)
        self.norm_regions_cross = nn.LayerNorm(dim)
        self.cross = Attention(dim, heads, dropout)
        self.norm_text_self = nn.LayerNorm(dim)
        self.text_self = Attention(dim, heads, dropout)
        self.norm_regions_self = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.region_self = Attention(dim, heads, dropout)
        self.text_ff = FeedForward(dim, dropout)
        self.region_ff = FeedForward(dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, text: torch.Tensor, regions: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        out, cross = self.cross(self.norm_text_cross(text), self.norm_regions_cross(regions))
        text = text + self.drop(out)
        out, text_self = self.text_self(self.norm_text_self(text), key_mask=text_mask)
        text = text + self.drop(out)
        context = torch.cat([regions, text], dim=1)  # (B, R + T, D)
        context_mask = torch.cat([text_mask.new_ones(regions.shape[:2]), text_mask], dim=1)
        out, _ = self.region_self(self.norm_regions_self(regions), self.norm_context(context), context_mask)
        regions = regions + self.drop(out)
        text = text + self.drop(self.text_ff(text))
        regions = regions + self.drop(self.region_ff(regions))
        return text, regions, cross, text_self


def position_embedding_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine embedding (h*w, dim): half the channels code x, half y.

    Fixed rather than learned so position is meaningful from the first step and a region's
    (x, y) can be read linearly, which distance questions rely on.
    """
    if dim % 4:
        raise ValueError(f"fusion dim must be a multiple of 4 for 2-D positions, got {dim}")
    freqs = torch.exp(torch.arange(0, dim // 4) * (-math.log(1000.0) / (dim // 4)))  # (dim/4,)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    # positions scaled to about [0, 2*pi * 8] whatever the grid size
    xs, ys = xs.flatten()[:, None] / w * 50.0, ys.flatten()[:, None] / h * 50.0
    return torch.cat([(xs * freqs).sin(), (xs * freqs).cos(), (ys * freqs).sin(), (ys * freqs).cos()], dim=1)


class CrossModalFusion(nn.Module):
    """Projects both modalities to ``dim``, runs the fusion layers, returns the summary state."""

    def __init__(self, image_channels: int, text_dim: int, dim: int, heads: int, layers: int, dropout: float):
        super().__init__()
        self.image_proj = nn.Sequential(nn.Linear(image_channels, dim), nn.LayerNorm(dim))
        self.text_proj = nn.Sequential(nn.Linear(text_dim, dim), nn.LayerNorm(dim))
        self.position_proj = nn.Linear(dim, dim)
        self.summary = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.missing_region = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.layers = nn.ModuleList(FusionLayer(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.dim = dim

    def forward(
        self,
        feature_map: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: torch.Tensor,
        drop_image: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """feature_map (B, C, h, w), text_states (B, T, E), text_mask (B, T) bool;
        drop_image / drop_text (B,) bool mask one modality out per sample."""
        b, _, h, w = feature_map.shape
        regions = self.image_proj(feature_map.flatten(2).transpose(1, 2))  # (B, R, D)
        if drop_image is not None:
            regions = torch.where(drop_image[:, None, None], self.missing_region.to(regions.dtype), regions)
        positions = position_embedding_2d(h, w, self.dim).to(regions.device, regions.dtype)
        regions = regions + self.position_proj(positions)[None]

        text = torch.cat([self.summary.expand(b, 1, -1).to(text_states.dtype), self.text_proj(text_states)], dim=1)
        text_mask = text_mask.bool()
        if drop_text is not None:
            text_mask = text_mask & ~drop_text[:, None]
        text_mask = torch.cat([text_mask.new_ones(b, 1), text_mask], dim=1)  # (B, 1 + T)

        cross, text_self = [], []
        for layer in self.layers:
            text, regions, c, s = layer(text, regions, text_mask)
            cross.append(c)
            text_self.append(s)
        return self.norm(text[:, 0]), tuple(cross), tuple(text_self)

