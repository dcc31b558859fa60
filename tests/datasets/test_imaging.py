"""Image decoding: every case a user upload can hit, each checked on a real file."""

import io

import numpy as np
import pytest
from PIL import Image

from mmdemo.imaging import MAX_PIXELS, decode_image


def _save(image, fmt, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _colour_image(size=(40, 30)):
    a = np.zeros((size[1], size[0], 3), np.uint8)
    a[:, : size[0] // 2] = (200, 30, 10)
    a[:, size[0] // 2 :] = (10, 30, 200)
    return Image.fromarray(a)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF"])
def test_formats_decode_to_rgb(tmp_path, fmt):
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(_save(_colour_image(), fmt))
    image = decode_image(path)
    assert image.mode == "RGB" and image.size == (40, 30)
    left, right = np.asarray(image)[15, 5], np.asarray(image)[15, 35]
    assert left[0] > 150 and right[2] > 150  # colours survive


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert Image.open(path).n_frames == 3
    assert tuple(np.asarray(decode_image(path))[4, 4]) == (255, 0, 0)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 20, 20))  # white on the left half
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _save(image, "JPEG", exif=exif.tobytes())
    decoded = decode_image(data)
    assert decoded.size == (20, 40)
    top, bottom = np.asarray(decoded)[5, 10], np.asarray(decoded)[35, 10]
    assert top.mean() > 200 and bottom.mean() < 50  # the white half is now on top


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparency_is_composited_on_white(mode):
    image = Image.new(mode, (10, 10), (0, 0) if mode == "LA" else (0, 0, 0, 0))  # fully transparent black
    decoded = decode_image(_save(image, "PNG"))
    assert decoded.mode == "RGB" and tuple(np.asarray(decoded)[5, 5]) == (255, 255, 255)


def test_palette_with_transparency_is_composited_on_white():
    image = Image.new("P", (10, 10), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 5, 10))
    decoded = np.asarray(decode_image(_save(image, "PNG", transparency=0)))
    assert tuple(decoded[5, 2]) == (255, 0, 0) and tuple(decoded[5, 8]) == (255, 255, 255)


def test_greyscale_and_cmyk():
    grey = decode_image(_save(Image.new("L", (6, 6), 100), "PNG"))
    assert tuple(np.asarray(grey)[0, 0]) == (100, 100, 100)
    cmyk = decode_image(_save(Image.new("CMYK", (6, 6), (0, 255, 255, 0)), "JPEG"))
    r, g, b = np.asarray(cmyk)[3, 3]
    assert cmyk.mode == "RGB" and r > 200 and g < 60 and b < 60  # cyan 0, magenta+yellow full = red


def test_16_bit_greyscale_is_scaled_not_white():
    a = np.zeros((10, 10), np.uint16)
    a[:, 5:] = 4000  # a 12-bit sensor image: naive conversion clips all of this to white
    decoded = np.asarray(decode_image(_save(Image.fromarray(a), "PNG")))
    assert tuple(decoded[0, 0]) == (0, 0, 0) and tuple(decoded[0, 9]) == (255, 255, 255)


def test_pixel_cap_is_checked_before_decoding():
    data = _save(Image.new("1", (8000, 6000)), "PNG")  # 48 Mpx, a few kB on disk
    with pytest.raises(ValueError, match=r"8000x6000 = 48,000,000 pixels, over the limit of 40,000,000"):
        decode_image(data, name="huge.png")
    assert MAX_PIXELS == 40_000_000
    with pytest.raises(ValueError, match="over the limit of 100"):
        decode_image(_save(Image.new("RGB", (20, 20)), "PNG"), max_pixels=100)


def test_bad_files_give_clear_errors(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.png: the file is empty \(0 bytes\)"):
        decode_image(empty)
    jpeg = _save(_colour_image((200, 200)), "JPEG")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        decode_image(jpeg[: len(jpeg) // 2], name="cut.jpg")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="notes.png: not an image in a supported format"):
        decode_image(text)
    with pytest.raises(ValueError, match="missing.png: file not found"):
        decode_image(tmp_path / "missing.png")
    tiff = _save(_colour_image(), "TIFF")
    with pytest.raises(ValueError, match="not an image in a supported format"):
        decode_image(tiff, name="scan.tiff")
