"""Training-time changes to the inputs that keep their meaning: augmented image copies and
modality dropout.

An augmented copy is the image zoomed in on a random part (a random crop blown up to the full
size), shifted, mirrored left to right, blurred, and its brightness and contrast jittered; the
recipe switches each change on only where no question is about what it would change (a mirror
turns "left" into "right" and a 2 into something else, a blur answers "is it sharp?", a colour
jitter "is it bright?"). Modality dropout masks the image or the text of some rows, so the
model knows "text only" and "image only" as modes (the out-of-scope check and the baselines
use them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .settings import TrainSettings

# augmentation parameters of one copy: shift (dx, dy, fractions of the side), contrast gain,
# brightness bias (pixel values), zoom (the side of the part kept, 1: all of it), mirror (1:
# left and right swapped) and blur (the Gaussian's sigma, in pixels of the model's input)
PARAMS = ("dx", "dy", "gain", "bias", "zoom", "mirror", "blur")
IDENTITY = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0])  # leaves an image as it is


def augment_views(n_images: int, settings: TrainSettings, generator: torch.Generator) -> torch.Tensor:
    """(V, N, len(PARAMS)) augmentation of ``settings.augment_views`` copies of ``n_images``
    images; copy 0 is the image as it is. A zoomed copy keeps a random part of the image whose
    side is ``augment_zoom``..1 of the whole (its area: the square of that), anywhere inside it;
    half the copies are mirrored (with ``augment_mirror``) and half are blurred by up to
    ``augment_blur`` pixels."""
    u = torch.rand(settings.augment_views, n_images, 4, generator=generator) * 2 - 1  # U(-1, 1): shift, colour
    z = torch.rand(settings.augment_views, n_images, 3, generator=generator)  # U(0, 1): zoom, mirror, blur
    zoom = 1 - z[..., 0] * (1 - settings.augment_zoom)  # the side kept
    room = (1 - zoom) / 2  # how far a part of that side can move from the centre and stay inside
    views = torch.stack(
        [
            u[..., 0] * (room + settings.augment_shift),
            u[..., 1] * (room + settings.augment_shift),
            1 + u[..., 2] * settings.augment_colour,  # contrast
            u[..., 3] * settings.augment_colour * 128,  # brightness, in pixel values
            zoom,
            (z[..., 1] < 0.5).float() * float(settings.augment_mirror),
            torch.where(z[..., 2] < 0.5, 2 * z[..., 2], 0.0) * settings.augment_blur,
        ],
        -1,
    )
    views[0] = IDENTITY
    return views


def augment(pixels: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """uint8 images (U, 3, S, S) with params (U, len(PARAMS)) -> float (U, 3, S, S) in 0..255:
    zoomed, shifted and mirrored in one resampling (the edge pixels repeated into any gap),
    blurred, then gain and bias around mid-grey."""
    x = pixels.float()
    if torch.equal(params, IDENTITY.expand_as(params)):
        return x
    dx, dy, gain, bias, zoom, mirror, blur = params.unbind(-1)
    theta = torch.zeros(len(x), 2, 3)
    theta[:, 0, 0] = zoom * (1 - 2 * mirror)  # the sampling grid spans the kept part, reversed when mirrored
    theta[:, 1, 1] = zoom
    theta[:, 0, 2], theta[:, 1, 2] = -2 * dx, -2 * dy  # a shift by d of the side moves the grid by -2d
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    for i in torch.nonzero(blur > 0.05).flatten().tolist():
        x[i] = gaussian_blur(x[i], float(blur[i]))
    return ((x - 128) * gain[:, None, None, None] + 128 + bias[:, None, None, None]).clamp(0, 255)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """(C, H, W) float -> the same, blurred by a Gaussian of ``sigma`` pixels (separable, the
    edges reflected)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = image.shape[0]
    x = image[None]  # (1, C, H, W)
    x = F.conv2d(
        F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c
    )
    x = F.conv2d(
        F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c
    )
    return x[0]


def modality_dropout(n: int, p: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(drop_image, drop_text) masks of ``n`` rows: the image dropped with p/2, the text with
    p/2, never both."""
    u = torch.rand(n, generator=generator)
    return u < p / 2, (u >= p / 2) & (u < p)
