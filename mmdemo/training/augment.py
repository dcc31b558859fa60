"""Training-time changes to the inputs that keep their meaning: stage 2's augmented image
copies and modality dropout.

Augmentation never flips (a flip turns "left" into "right" and a 2 into something else): small
shifts, and brightness and contrast jitter only when no question is about brightness or colour
(the recipe decides). Modality dropout masks the image or the text of some rows, so the model
knows "text only" and "image only" as modes (the out-of-scope check and the baselines use them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .settings import TrainSettings

IDENTITY = torch.tensor([0.0, 0.0, 1.0, 0.0])  # augmentation parameters that leave an image as it is


def augment_views(n_images: int, settings: TrainSettings, generator: torch.Generator) -> torch.Tensor:
    """(V, N, 4) augmentation of ``settings.augment_views`` copies of ``n_images`` images:
    shift (dx, dy, fractions of the side) and colour (gain, bias); copy 0 is the image as it is."""
    u = torch.rand(settings.augment_views, n_images, 4, generator=generator) * 2 - 1  # U(-1, 1)
    views = torch.stack(
        [
            u[..., 0] * settings.augment_shift,
            u[..., 1] * settings.augment_shift,
            1 + u[..., 2] * settings.augment_colour,  # contrast
            u[..., 3] * settings.augment_colour * 128,  # brightness, in pixel values
        ],
        -1,
    )
    views[0] = IDENTITY
    return views


def augment(pixels: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """uint8 images (U, 3, S, S) with params (U, [dx, dy, gain, bias]) -> float (U, 3, S, S) in
    0..255: shifted (the edge pixels repeated into the gap), then gain and bias around mid-grey."""
    x = pixels.float()
    if torch.equal(params, IDENTITY.expand_as(params)):
        return x
    theta = torch.zeros(len(x), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = -2 * params[:, :2]  # a shift by d of the side moves the sampling grid by -2d
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gain, bias = params[:, 2, None, None, None], params[:, 3, None, None, None]
    return ((x - 128) * gain + 128 + bias).clamp(0, 255)


def modality_dropout(n: int, p: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(drop_image, drop_text) masks of ``n`` rows: the image dropped with p/2, the text with
    p/2, never both."""
    u = torch.rand(n, generator=generator)
    return u < p / 2, (u >= p / 2) & (u < p)
