"""Image decoding: any file a user may upload -> an RGB ``PIL.Image``, or a clear ValueError.

Decoding is ours, not the UI's, so the CLI, the API and the browser treat a file the same:
- formats PNG, JPEG, WebP, GIF, BMP (GIF and animated WebP: the first frame);
- the EXIF orientation is applied, so phone photos are upright;
- transparency (RGBA, LA, PA, P with a transparent colour) is composited on white;
- 16-bit and 32-bit greyscale (I;16, I, F) is scaled by its maximum, not clipped to white;
- CMYK, L, 1, YCbCr ... are converted to RGB;
- the pixel count is checked against a cap from the header, before any pixel is decoded.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
MAX_PIXELS = 40_000_000

ImageSource = str | os.PathLike | bytes | Image.Image


def decode_image(source: ImageSource, name: str | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``source`` (a path, the file's bytes, or an opened image) to an RGB image.

    ``name`` is what error messages call the file (default: the file name, never a server path
    unless the caller passes one).
    """
    if isinstance(source, Image.Image):
        return _to_rgb(_first_frame(source))
    if isinstance(source, bytes):
        name = name or "image"
        data = source
    else:
        path = Path(source)
        name = name or path.name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ValueError(f"{name}: file not found") from None
        except IsADirectoryError:
            raise ValueError(f"{name}: is a folder, not an image file") from None
        except OSError as e:
            raise ValueError(f"{name}: cannot be read ({e.strerror})") from None
    if not data:
        raise ValueError(f"{name}: the file is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ValueError(f"{name}: not an image in a supported format ({', '.join(FORMATS)})") from None
    except Image.DecompressionBombError:
        raise ValueError(f"{name}: image is too large (over {max_pixels:,} pixels)") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ValueError(
            f"{name}: image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}"
        )
    if width == 0 or height == 0:
        raise ValueError(f"{name}: image has no pixels ({width}x{height})")
    try:
        image = _first_frame(image)
        image.load()
        return _to_rgb(image)
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise ValueError(f"{name}: the image data is truncated or corrupt ({e})") from None


def _first_frame(image: Image.Image) -> Image.Image:
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    # exif_transpose also works on images without EXIF; it returns a loaded copy
    return ImageOps.exif_transpose(image) or image


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        peak = float(values.max()) if values.size else 0.0
        scaled = values * (255.0 / peak) if peak > 0 else values
        return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "L" and "transparency" in image.info:
        return _to_rgb(image.convert("LA"))
    return image.convert("RGB")
