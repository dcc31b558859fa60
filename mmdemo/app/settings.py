"""Where the app writes and how much one visitor may ask of it: every bound in one place,
each overridable by an environment variable (listed in docs/deploy.md).

- The data folder (``MMDEMO_DATA_DIR``): ``/data/mmdemo`` when ``/data`` is writable (a Space
  with persistent storage), else the user's data folder, ``$XDG_DATA_HOME/mmdemo`` or
  ``~/.local/share/mmdemo`` (not a cache folder: what is kept there must survive a restart);
  never the repository. Fine-tuned checkpoints go to ``<data>/checkpoints``
  (``MMDEMO_CHECKPOINT_DIR``), job records to ``<data>/jobs``, ratings to ``<data>/ratings.sqlite``.
- Upload folders live under the system temporary folder (``TMPDIR``), one per check or job.
- The CLI passes no limits: a local user's own files are not capped.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

UPLOAD_PREFIX = "mmdemo-upload-"


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from None


def _env_int(name: str, default: int) -> int:
    return int(_env_float(name, default))


@dataclass(frozen=True)
class Limits:
    """Bounds on one request or one visitor (web app only). Env var: MMDEMO_<FIELD upper>."""

    max_text_chars: int = 2_000  # a question or description, refused above this
    max_upload_mb: int = 200  # any single uploaded file (Gradio answers 413 above it)
    max_csv_rows: int = 20_000  # data rows of a training CSV
    max_csv_mb: int = 20  # bytes of a training CSV
    max_zip_mb: int = 1_000  # bytes a zip of images may expand to
    max_zip_entries: int = 20_000
    max_image_pixels: int = 40_000_000  # checked from the header, before decoding
    max_checkpoints: int = 5  # fine-tuned checkpoints per visitor
    max_visitor_disk_mb: int = 500  # disk of one visitor's checkpoints
    anonymous_ttl_hours: int = 72  # an anonymous visitor's checkpoints are deleted after this
    max_queued_jobs: int = 8  # fine-tune jobs waiting, all visitors together
    max_jobs_per_visitor: int = 1  # running or queued
    job_time_limit_min: int = 120  # a job is stopped (its best epoch kept) after this
    max_epochs: int = 50
    session_ttl_min: int = 60  # per-page state is dropped this long after the page closes
    predict_concurrency: int = 8  # /predict calls run at once (those that meet share one batch)

    @classmethod
    def from_env(cls) -> Limits:
        return cls(**{f.name: _env_int(f"MMDEMO_{f.name.upper()}", f.default) for f in fields(cls)})


@dataclass(frozen=True)
class CacheLimits:
    """Bounds on Gradio's file cache (visitors' uploads, the app's output images), swept by
    mmdemo.ui.cache.CacheSweeper every 2 s. A file leaves when unused for ``ttl_min``, or
    sooner, least recently used first, while the cache is over ``max_mb`` (unless a live page
    holds it, or it is an upload no request has sent yet); never while a queued or running
    request refers to it, nor within ``min_age_s`` of its last use."""

    ttl_min: float = 3.0  # MMDEMO_CACHE_TTL_MIN
    max_mb: float = 10.0  # MMDEMO_CACHE_MAX_MB (about a minute of outputs at 4 requests/s)
    min_age_s: float = 30.0  # MMDEMO_CACHE_MIN_AGE_S

    @classmethod
    def from_env(cls) -> CacheLimits:
        return cls(**{f.name: _env_float(f"MMDEMO_CACHE_{f.name.upper()}", f.default) for f in fields(cls)})


def shared_mode() -> bool:
    """MMDEMO_SHARED=1: a private deployment where everyone sees and controls everything."""
    return os.environ.get("MMDEMO_SHARED", "").strip().lower() in ("1", "true", "yes", "on")


def data_dir() -> Path:
    """The app's writable folder (created if needed)."""
    explicit = os.environ.get("MMDEMO_DATA_DIR", "").strip()
    if explicit:
        folder = Path(explicit)
    elif os.path.isdir("/data") and os.access("/data", os.W_OK):
        folder = Path("/data/mmdemo")
    else:
        user_data = os.environ.get("XDG_DATA_HOME", "").strip() or str(Path.home() / ".local" / "share")
        folder = Path(user_data) / "mmdemo"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def checkpoint_dir() -> Path:
    explicit = os.environ.get("MMDEMO_CHECKPOINT_DIR", "").strip()
    return Path(explicit) if explicit else data_dir() / "checkpoints"


def upload_root() -> Path:
    """Where upload folders are made: the system temporary folder (TMPDIR)."""
    return Path(tempfile.gettempdir())
