"""Cross-modal fusion: image regions relate to each other, then text tokens query them.

One ``Attention(x, context, mask)`` serves self- and cross-attention (as in vit-pytorch's
cross_vit). The softmax is computed explicitly so the weights are returned to the caller:
explanations read them from the model's output, never through hooks.

Two stacks:
1. a region encoder (``region_layers`` self-attention layers over the image's regions, with
   2-D positions): regions compare themselves with each other, which relational questions
   (closest, furthest, how many) need. It does not depend on the text, so it runs once per
   image even when a batch holds many questions about the same image (``image_index``);
2. a text decoder (``layers`` layers): text tokens attend to the regions (the cross-modal
   attention that the explanations read), then to each other, then a feed-forward block.
A learned summary token is prepended to the text; the head reads its final state. It makes
an image-only input well defined (the summary token alone queries the image), while a
text-only input replaces every region with a learned "missing image" token.

With ``position_readout`` the summary also carries *where* the text looked: the expected (x, y)
of each cross-attention head's weights, for the summary token and for the mean text token. Once
a question's words have found their object (which its colour or shape teaches in the first
steps), left/right and top/bottom are a linear function of these coordinates, instead of a
direction the value vectors must first learn to carry; several tasks about one object then
learn their positions together rather than one after another.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class RowGroups(NamedTuple):
    """Which shared context (image) each query row uses, and its slot among that image's rows."""

    index: torch.Tensor  # (B,) context of each row
    slot: torch.Tensor  # (B,) position of the row among the rows of its context
    size: int  # the most rows any context has


def group_rows(index: torch.Tensor, n_contexts: int) -> RowGroups:
    order = torch.argsort(index, stable=True)
    counts = torch.bincount(index, minlength=n_contexts)
    starts = counts.cumsum(0) - counts
    slot = torch.empty_like(index)
    slot[order] = torch.arange(len(index), device=index.device) - starts[index[order]]
    return RowGroups(index, slot, int(counts.max()))


class Attention(nn.Module):
    """Multi-head attention of ``x`` over ``context`` (itself when None); returns the weights.

    With ``groups``, many query rows share one context row (many questions about one image):
    the queries of each context are stacked so keys and values are computed and multiplied
    once per context, instead of being copied for every query row. The weights returned are
    then gathered per row: right for reading, but not on the path from input to output, so
    gradient-weighted explanations use the ungrouped path.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, additive: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"fusion dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        # additive (Bahdanau) scores w . tanh(q + k) per head: the tanh lets a score require a
        # conjunction ("red" AND this region is red), which dot products learn far more slowly
        self.additive = nn.Parameter(torch.randn(heads, dim // heads) * (dim // heads) ** -0.5) if additive else None

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        groups: RowGroups | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        context = x if context is None else context
        b, n, d = x.shape
        u, m = context.shape[:2]
        h = self.heads
        q = self.to_q(x)  # (B, N, D)
        rows = n
        if groups is not None:  # stack each context's query rows: (U, K * N, D)
            stacked = q.new_zeros(u, groups.size, n, d)
            stacked[groups.index, groups.slot] = q
            q, rows = stacked.view(u, groups.size * n, d), groups.size * n
        q = q.view(-1, rows, h, d // h).transpose(1, 2)  # (U, H, K * N, d)
        k, v = self.to_kv(context).view(u, m, 2, h, d // h).permute(2, 0, 3, 1, 4)  # (U, H, M, d)
        if self.additive is not None:
            hidden = torch.tanh(q[..., :, None, :] + k[..., None, :, :])  # (U, H, K * N, M, d)
            scores = (hidden * self.additive[None, :, None, None, :]).sum(-1)  # (U, H, K * N, M)
        else:
            scores = (q @ k.transpose(-1, -2)) * self.scale  # (U, H, K * N, M)
        if key_mask is not None:  # (U, M) True = attend
            scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1)  # each row sums to 1
        out = (self.dropout(weights) @ v).transpose(1, 2)  # (U, K * N, H, d)
        if groups is not None:  # back to one entry per query row
            out = out.reshape(u, groups.size, n, d)[groups.index, groups.slot]  # (B, N, D)
            weights = weights.view(u, h, groups.size, n, m).transpose(1, 2)[groups.index, groups.slot]  # (B, H, N, M)
        return self.out(out.reshape(b, n, d)), weights


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, dropout: float):
        super().__init__(
            nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim)
        )


class RegionLayer(nn.Module):
    """Self-attention among regions + feed-forward (pre-norm, residual)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = Attention(dim, heads, dropout)
        self.ff = FeedForward(dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        out, _ = self.attention(self.norm(regions))
        regions = regions + self.drop(out)
        return regions + self.drop(self.ff(regions))


class TextLayer(nn.Module):
    """Text -> regions cross-attention, text self-attention, feed-forward (pre-norm, residual)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm_cross = nn.LayerNorm(dim)
        self.cross = Attention(dim, heads, dropout)
        self.norm_self = nn.LayerNorm(dim)
        self.self_attention = Attention(dim, heads, dropout)
        self.ff = FeedForward(dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, text: torch.Tensor, regions: torch.Tensor, text_mask: torch.Tensor, groups: RowGroups | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out, cross = self.cross(self.norm_cross(text), regions, groups=groups)
        text = text + self.drop(out)
        out, text_self = self.self_attention(self.norm_self(text), key_mask=text_mask)
        text = text + self.drop(out)
        return text + self.drop(self.ff(text)), cross, text_self


def position_embedding_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine embedding (h*w, dim): half the channels code x, half y.

    Fixed rather than learned so position is meaningful from the first step and a region's
    (x, y) can be read linearly, which distance questions rely on.
    """
    if dim % 4:
        raise ValueError(f"fusion dim must be a multiple of 4 for 2-D positions, got {dim}")
    freqs = torch.exp(torch.arange(0, dim // 4) * (-math.log(100.0) / (dim // 4)))  # (dim/4,)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    # (x, y) in [0, 1) whatever the grid size, times 2*pi: the lowest frequency spans the image
    xs = (xs.flatten()[:, None] + 0.5) / w * 2 * math.pi
    ys = (ys.flatten()[:, None] + 0.5) / h * 2 * math.pi
    return torch.cat([(xs * freqs).sin(), (xs * freqs).cos(), (ys * freqs).sin(), (ys * freqs).cos()], dim=1)


class CrossModalFusion(nn.Module):
    """Projects both modalities to ``dim``, runs both stacks, returns the summary state."""

    def __init__(
        self,
        image_channels: int,
        text_dim: int,
        dim: int,
        heads: int,
        layers: int,
        region_layers: int,
        dropout: float,
        patch_size: int = 0,
        position_readout: bool = False,
    ):
        super().__init__()
        self.image_proj = nn.Sequential(nn.Linear(image_channels, dim), nn.LayerNorm(dim))
        # the region's own pixels, linearly embedded as in ViT: exact colour and layout, which
        # ImageNet features blur (they are built to be colour- and position-invariant)
        self.patch_size = patch_size
        self.pixel_proj = nn.Conv2d(3, dim, patch_size, stride=patch_size) if patch_size else None
        self.text_proj = nn.Sequential(nn.Linear(text_dim, dim), nn.LayerNorm(dim))
        self.position_proj = nn.Linear(dim, dim)
        self.summary = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.question_proj = nn.Linear(dim, dim)
        self.missing_region = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.region_layers = nn.ModuleList(RegionLayer(dim, heads, dropout) for _ in range(region_layers))
        self.region_norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(TextLayer(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(2 * dim)
        # (x, y) of [summary; mean token] per layer and head -> the pooled state; zero at first,
        # so the model starts as one without it
        self.position_readout = nn.Linear(layers * heads * 4, 2 * dim) if position_readout else None
        if self.position_readout is not None:
            nn.init.zeros_(self.position_readout.weight)
            nn.init.zeros_(self.position_readout.bias)
        self.dim = dim

    def encode_regions(
        self, feature_map: torch.Tensor, pixels: torch.Tensor | None = None, missing: bool = True
    ) -> torch.Tensor:
        """(U, C, h, w) feature maps (and the (U, 3, S, S) pixels they came from) -> (U + 1, R, D)
        region tokens; the last entry is the "missing image" (a learned token everywhere).
        ``missing=False`` leaves that entry out, (U, R, D): it costs as much as one more image and
        only rows that drop the image read it."""
        u, _, h, w = feature_map.shape
        regions = self.image_proj(feature_map.flatten(2).transpose(1, 2))  # (U, R, D)
        if self.pixel_proj is not None and pixels is not None:
            p = self.patch_size
            pad_h, pad_w = h * p - pixels.shape[-2], w * p - pixels.shape[-1]
            if pad_h or pad_w:  # the encoder's 'same' padding rounds the grid up
                pixels = F.pad(pixels, (0, max(pad_w, 0), 0, max(pad_h, 0)))[..., : h * p, : w * p]
            regions = regions + self.pixel_proj(pixels).flatten(2).transpose(1, 2)  # (U, R, D)
        if missing:
            regions = torch.cat([regions, self.missing_region.to(regions.dtype).expand(1, h * w, -1)])  # (U + 1, R, D)
        positions = self.position_proj(position_embedding_2d(h, w, self.dim).to(regions.device, regions.dtype))
        regions = regions + positions[None]
        for layer in self.region_layers:
            regions = layer(regions)
        return self.region_norm(regions)

    def forward(
        self,
        feature_map: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: torch.Tensor,
        drop_image: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        pixels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """feature_map (U, C, h, w); text_states (B, T, E); text_mask (B, T) bool;
        image_index (B,) the feature map of each row (default: row i -> map i, U = B);
        pixels (U, 3, S, S) the normalised images, for the patch embedding;
        drop_image / drop_text (B,) bool mask one modality out per sample."""
        b = text_states.shape[0]
        regions = self.encode_regions(feature_map, pixels, missing=drop_image is not None)  # (U [+ 1], R, D)
        if image_index is None and drop_image is None:
            # one image per row: plain attention, whose returned weights are the very tensors
            # the output is computed from (gradient-weighted explanations differentiate them)
            groups, regions = None, regions[:b]
        else:
            if image_index is None:
                image_index = torch.arange(b, device=regions.device)
            if drop_image is not None:
                image_index = torch.where(drop_image, regions.shape[0] - 1, image_index)
            groups = group_rows(image_index, regions.shape[0])
        return self.read(regions, text_states, text_mask, drop_text, groups)

    def read(
        self,
        regions: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: torch.Tensor,
        drop_text: torch.Tensor | None = None,
        groups: RowGroups | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """The text stack: (B, T, E) text states read encoded regions, (B, R, D) one per row, or
        (U, R, D) shared through ``groups``; returns the summary state and the attention."""
        b = text_states.shape[0]
        text_mask = text_mask.bool()
        if drop_text is not None:
            text_mask = text_mask & ~drop_text[:, None]
        tokens = self.text_proj(text_states)  # (B, T, D)
        # the summary token starts from the whole question (mean of its tokens), so it can look
        # for the right object from the first layer on
        weights = text_mask[..., None].to(tokens.dtype)
        question = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, D); zeros without text
        summary = self.summary.to(tokens.dtype) + self.question_proj(question)[:, None]  # (B, 1, D)
        text = torch.cat([summary, tokens], dim=1)  # (B, 1 + T, D)
        text_mask = torch.cat([text_mask.new_ones(b, 1), text_mask], dim=1)  # (B, 1 + T)

        cross, text_self = [], []
        for layer in self.layers:
            text, c, s = layer(text, regions, text_mask, groups)
            cross.append(c)
            text_self.append(s)
        # the head reads the summary token and the mean of all tokens: a word that found its
        # object (the colour word finding the red one) reaches the head in one hop
        weights = text_mask[..., None].to(text.dtype)
        pooled = torch.cat([text[:, 0], (text * weights).sum(1) / weights.sum(1)], dim=-1)  # (B, 2D)
        if self.position_readout is not None:
            pooled = pooled + self.position_readout(attended_positions(cross, text_mask))
        return self.norm(pooled), tuple(cross), tuple(text_self)


def region_coordinates(n_regions: int) -> torch.Tensor:
    """(R, 2) centres (x, y) in [-1, 1] of a square grid of ``n_regions`` regions, row by row."""
    side = math.isqrt(n_regions)
    if side * side != n_regions:
        raise ValueError(f"the position readout needs a square region grid, got {n_regions} regions")
    centres = (torch.arange(side, dtype=torch.float32) + 0.5) / side * 2 - 1
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)


def attended_positions(cross: list[torch.Tensor], text_mask: torch.Tensor) -> torch.Tensor:
    """Where the text looked: per layer's (B, H, 1 + T, R) cross-attention, the expected region
    centre of each head for the summary token and for the mean of the text tokens (``text_mask``
    (B, 1 + T), the summary first) -> (B, layers * H * 4)."""
    coords = region_coordinates(cross[0].shape[-1]).to(cross[0].device, cross[0].dtype)  # (R, 2)
    tokens = text_mask[:, 1:].to(cross[0].dtype)  # (B, T)
    share = tokens / tokens.sum(1, keepdim=True).clamp(min=1)  # (B, T): zeros without text
    out = []
    for weights in cross:
        summary = weights[:, :, 0] @ coords  # (B, H, 2)
        mean = torch.einsum("bt,bhtr->bhr", share, weights[:, :, 1:]) @ coords  # (B, H, 2)
        out.append(torch.cat([summary, mean], dim=-1).flatten(1))  # (B, H * 4)
    return torch.cat(out, dim=1)
