"""Uploads are handled safely; the registry lists checkpoints; a job trains in the background."""

import csv
import io
import stat
import zipfile

import pytest
from PIL import Image

from mmdemo.checkpoint import save_checkpoint
from mmdemo.data import read_csv
from mmdemo.jobs import DataSource, JobManager
from mmdemo.model import build_model
from mmdemo.registry import CheckpointRegistry, owner_id, validate_name
from mmdemo.train import TrainSettings
from mmdemo.uploads import extract_zip

from .conftest import tiny_config


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


def test_checkpoint_names_are_validated():
    assert validate_name(" my-model_2.1 ") == "my-model_2.1"
    for bad in ("", "../x", "a/b", ".hidden", "x" * 65, "spaces here"):
        with pytest.raises(ValueError, match="not valid"):
            validate_name(bad)


OWNER = owner_id("x" * 43)
OTHER = owner_id("y" * 43)


def test_registry_lists_shipped_and_the_owners_checkpoints(tmp_path):
    shipped, writable = tmp_path / "shipped", tmp_path / "mine"
    save_checkpoint(build_model(tiny_config()), shipped / "default")
    save_checkpoint(build_model(tiny_config()), writable / OWNER / "tuned")
    (writable / OWNER / "not-a-checkpoint").mkdir()
    registry = CheckpointRegistry(writable, shipped)
    assert registry.names() == ["default"]  # no owner: the shipped ones only
    assert registry.names(OWNER) == ["default", "tuned"]
    assert registry.names(OTHER) == ["default"]  # another visitor does not see it
    assert registry.predictor("tuned", OWNER) is registry.predictor("tuned", OWNER)  # cached
    with pytest.raises(ValueError, match="unknown checkpoint 'tuned'"):
        registry.predictor("tuned", OTHER)
    with pytest.raises(ValueError, match="unknown checkpoint 'nope'"):
        registry.path("nope")
    archive = registry.zip("tuned", tmp_path, OWNER)
    assert sorted(zipfile.ZipFile(archive).namelist()) == [
        "tuned/",
        "tuned/README.md",
        "tuned/config.json",
        "tuned/model.safetensors",
    ]
    with pytest.raises(ValueError, match="unknown checkpoint"):
        registry.zip("tuned", tmp_path, OTHER)


def _dataset(folder):
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(12):
        Image.new("RGB", (16, 16), (255, 0, 0) if i % 2 else (0, 0, 255)).save(folder / "img" / f"{i}.png")
        rows.append([f"img/{i}.png", "what colour?", "red" if i % 2 else "blue"])
    with open(folder / "data.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "text", "label"], *rows])
    dataset = read_csv(folder / "data.csv", image_root=folder, confine=True)
    return dataset, DataSource(folder, folder / "data.csv")


def test_job_trains_in_a_worker_process_and_saves_a_usable_checkpoint(tmp_path):
    dataset, source = _dataset(tmp_path / "up")
    shipped = tmp_path / "shipped"
    save_checkpoint(build_model(tiny_config(labels=["blue", "red"])), shipped / "base")
    registry = CheckpointRegistry(tmp_path / "mine", shipped)
    jobs = JobManager(registry, tmp_path / "jobs")
    settings = TrainSettings(epochs=2, batch_size=4, freeze=[])
    status = jobs.start(OWNER, dataset, source, settings, "tuned", base="base", val_fraction=0.25)
    assert status["state"] in ("queued", "preparing")
    with pytest.raises(ValueError, match="already have a fine-tune job"):
        jobs.start(OWNER, dataset, source, settings, "other", base="base")
    assert jobs.status(OTHER)["state"] == "idle"  # another visitor sees nothing of it
    jobs.stop(OTHER)
    status = jobs.wait(OWNER, 240)
    assert status["state"] == "done", status["message"]
    assert len(status["history"]) == 2 and status["progress"] == 1.0
    assert "tuned" in registry.names(OWNER) and "tuned" not in registry.names(OTHER)
    assert not (tmp_path / "up").exists()  # the upload folder went with the job
    Image.new("RGB", (16, 16), (255, 0, 0)).save(tmp_path / "red.png")
    assert registry.predictor("tuned", OWNER).predict(tmp_path / "red.png", "what colour?").label in ("blue", "red")
    with pytest.raises(ValueError, match="already exists"):
        jobs.start(OWNER, dataset, source, settings, "tuned", base="base")
    with pytest.raises(ValueError, match="'base' is a shipped checkpoint and cannot be overwritten"):
        jobs.start(OWNER, dataset, source, settings, "base", base="base", overwrite=True)
    jobs.close()
