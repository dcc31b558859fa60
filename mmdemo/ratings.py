"""Stakeholder ratings of explanations, in one SQLite file in the app's data folder.

A rating says whether a heatmap "points at the right thing", "partly" or is "wrong", with an
optional comment, and records what was rated: checkpoint, image (content hash and name),
question, prediction, explanation method, the rater (the visitor id) and the time.

Safe with concurrent users: WAL journal (readers never block the writer), a connection per
operation (sqlite3 connections are not shared between threads), a busy timeout so a writer
waits for another instead of failing, and each write in one ``BEGIN IMMEDIATE`` transaction.
The schema is versioned with ``PRAGMA user_version``; ``MIGRATIONS[i]`` takes version i to i+1,
so a file written by an older release is upgraded in place when it is opened.
"""

from __future__ import annotations

import csv
import io
import os
import sqlite3
import threading
import time
from collections import defaultdict
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

RATINGS = ("right", "partly", "wrong")
RATING_TEXT = {"right": "points at the right thing", "partly": "partly", "wrong": "wrong"}
FILE_NAME = "ratings.sqlite"
BUSY_TIMEOUT_S = 30.0
MAX_COMMENT = 2000  # characters
MAX_FIELD = 1000  # characters of a question, a name ...

MIGRATIONS = (
    # 0 -> 1: the ratings table
    """
    CREATE TABLE ratings (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at REAL NOT NULL,
        rater TEXT NOT NULL,
        checkpoint TEXT NOT NULL,
        image_hash TEXT NOT NULL,
        image_name TEXT NOT NULL,
        question TEXT NOT NULL,
        prediction TEXT NOT NULL,
        method TEXT NOT NULL,
        rating TEXT NOT NULL CHECK (rating IN ('right', 'partly', 'wrong')),
        comment TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX ratings_checkpoint ON ratings (checkpoint);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
FIELDS = (
    "id",
    "created_at",
    "rater",
    "checkpoint",
    "image_hash",
    "image_name",
    "question",
    "prediction",
    "method",
    "rating",
    "comment",
)


def data_dir() -> Path:
    """The app's persistent data folder, the one place this is decided: $MMDEMO_DATA_DIR when
    set; else /data/mmdemo where /data is writable (a Hugging Face Space's persistent storage);
    else the user's data folder ($XDG_DATA_HOME or ~/.local/share, /mmdemo). Never a temporary
    folder: what is kept here (ratings) must survive a restart."""
    if os.environ.get("MMDEMO_DATA_DIR"):
        return Path(os.environ["MMDEMO_DATA_DIR"])
    if os.path.isdir("/data") and os.access("/data", os.W_OK):
        return Path("/data/mmdemo")
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "mmdemo"


@dataclass
class Rating:
    rater: str
    checkpoint: str
    image_hash: str
    image_name: str
    question: str
    prediction: str
    method: str
    rating: str
    comment: str = ""

    def validated(self) -> Rating:
        if self.rating not in RATINGS:
            raise ValueError(f"rating must be one of {', '.join(RATINGS)}, got {self.rating!r}")
        comment = (self.comment or "").strip()
        if len(comment) > MAX_COMMENT:
            raise ValueError(f"the comment has {len(comment):,} characters, over the limit of {MAX_COMMENT:,}")
        values = asdict(self)
        for name in ("rater", "checkpoint", "image_hash", "image_name", "question", "prediction", "method"):
            if not str(values[name] or "").strip():
                raise ValueError(f"a rating needs its {name.replace('_', ' ')}")
            if len(str(values[name])) > MAX_FIELD:
                raise ValueError(f"the {name.replace('_', ' ')} is over {MAX_FIELD:,} characters")
        return Rating(**{**values, "comment": comment})


class RatingStore:
    """Ratings in ``folder/ratings.sqlite``: created and migrated by the first write (or an
    existing file by the first use); until then reads find no ratings and nothing is written."""

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / FILE_NAME
        self._ready = False
        self._ready_lock = threading.Lock()
        if self.path.is_file():
            self._ensure()

    def _ensure(self) -> None:
        with self._ready_lock:
            if not self._ready:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._migrate()
                self._ready = True

    def _connect(self) -> sqlite3.Connection:
        # autocommit mode: transactions are the explicit BEGIN ... COMMIT below
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.row_factory = sqlite3.Row
        return conn

    def _migrate(self) -> None:
        with closing(self._connect()) as conn:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then see it done
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise ValueError(
                        f"{self.path.name} has schema version {version}, newer than this release's {SCHEMA_VERSION}"
                    )
                for step in range(version, SCHEMA_VERSION):
                    for statement in MIGRATIONS[step].split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {step + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def schema_version(self) -> int:
        self._ensure()
        with closing(self._connect()) as conn:
            return conn.execute("PRAGMA user_version").fetchone()[0]

    def add(self, rating: Rating) -> int:
        """Store one rating (validated); returns its id."""
        r = rating.validated()
        self._ensure()
        with closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = conn.execute(
                    "INSERT INTO ratings (created_at, rater, checkpoint, image_hash, image_name, question,"
                    " prediction, method, rating, comment) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        time.time(),
                        r.rater,
                        r.checkpoint,
                        r.image_hash,
                        r.image_name,
                        r.question,
                        r.prediction,
                        r.method,
                        r.rating,
                        r.comment,
                    ),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return int(cursor.lastrowid)

    def all(self, checkpoint: str | None = None) -> list[dict]:
        if not self.path.is_file():
            return []
        self._ensure()
        query = "SELECT * FROM ratings" + (" WHERE checkpoint = ?" if checkpoint else "") + " ORDER BY id"
        with closing(self._connect()) as conn:
            return [dict(row) for row in conn.execute(query, (checkpoint,) if checkpoint else ())]

    def export_csv(self, out: str | os.PathLike | None = None) -> str:
        """Every rating as CSV (times in UTC, ISO 8601); written to ``out`` when given."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in self.all():
            row["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row["created_at"]))
            writer.writerow(row)
        text = buffer.getvalue()
        if out is not None:
            Path(out).write_text(text, encoding="utf-8")
        return text

    def summary(self) -> dict[str, dict[str, int]]:
        """Per checkpoint: how many ratings of each kind, and in all."""
        out: dict[str, dict[str, int]] = defaultdict(lambda: {**{r: 0 for r in RATINGS}, "total": 0})
        if not self.path.is_file():
            return {}
        self._ensure()
        with closing(self._connect()) as conn:
            for row in conn.execute(
                "SELECT checkpoint, rating, COUNT(*) AS n FROM ratings GROUP BY checkpoint, rating"
            ):
                out[row["checkpoint"]][row["rating"]] = row["n"]
                out[row["checkpoint"]]["total"] += row["n"]
        return dict(sorted(out.items()))
