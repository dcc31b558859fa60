"""An uploaded zip of images is extracted only when every entry is a plain relative file under the
caps: absolute and '..' paths, links, too many entries, too much data and non-zips are refused."""

import io
import stat
import zipfile

import pytest
from PIL import Image

from mmdemo.datasets.archives import extract_zip


def _zip(path, entries):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries:
            if isinstance(data, zipfile.ZipInfo):
                z.writestr(data, b"target")
            else:
                z.writestr(name, data)
    return path


def _png():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def test_zip_extracts_plain_relative_files(tmp_path):
    root = extract_zip(
        _zip(tmp_path / "ok.zip", [("images/a.png", _png()), ("images/sub/b.png", _png())]), tmp_path / "out"
    )
    assert (root / "images" / "a.png").is_file() and (root / "images" / "sub" / "b.png").is_file()


@pytest.mark.parametrize("name", ["/etc/passwd", "../evil.png", "images/../../evil.png", "C:/windows/x.png"])
def test_zip_refuses_absolute_and_parent_paths(tmp_path, name):
    with pytest.raises(ValueError, match="absolute or '..' path"):
        extract_zip(_zip(tmp_path / "bad.zip", [(name, b"x")]), tmp_path / "out")
    assert not (tmp_path / "evil.png").exists()


def test_zip_refuses_links_too_many_entries_and_too_much_data(tmp_path):
    link = zipfile.ZipInfo("images/link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with pytest.raises(ValueError, match="is a link"):
        extract_zip(_zip(tmp_path / "l.zip", [("images/link.png", link)]), tmp_path / "o1")
    many = _zip(tmp_path / "m.zip", [(f"f{i}.txt", b"x") for i in range(11)])
    with pytest.raises(ValueError, match="11 entries, over the limit of 10"):
        extract_zip(many, tmp_path / "o2", max_entries=10)
    big = _zip(tmp_path / "b.zip", [("big.bin", b"\0" * 5_000_000)])
    with pytest.raises(ValueError, match="over the limit"):
        extract_zip(big, tmp_path / "o3", max_bytes=1_000_000)
    (tmp_path / "not.zip").write_text("hello")
    with pytest.raises(ValueError, match="not a valid zip"):
        extract_zip(tmp_path / "not.zip", tmp_path / "o4")
