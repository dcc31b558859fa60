"""Stakeholder ratings of explanations, in one SQLite file in the app's data folder.

A rating says whether a heatmap "points at the right thing", "partly" or is "wrong", with an
optional comment, and records what was rated: checkpoint, image (content hash and name),
question, prediction, explanation method, the rater (the visitor id the UI resolved from the
owner token, never a session hash) and the time. A visitor's export holds only their own ratings;
everyone's (with comments and rater ids) goes to the host only: ``MMDEMO_RATINGS_EXPORT_ALL=1``
(``export_all``) or the file itself.

Safe with concurrent users: WAL journal (readers never block the writer), a connection per
operation (sqlite3 connections are not shared between threads), a busy timeout so a writer
waits for another instead of failing, and each write in one ``BEGIN IMMEDIATE`` transaction.
The schema is versioned with ``PRAGMA user_version``; ``MIGRATIONS[i]`` takes version i to i+1,
so a file written by an older release is upgraded in place when it is opened.

A broken file fails alone: a file that is locked by another program, unreadable or from a newer
release turns the ratings off (``RatingsUnavailable``, whose message names the file but not its
folder; the full path goes to the log once), and a file that is not a database is moved aside
as ``ratings.sqlite.corrupt-<UTC time>`` (the next start begins a new one). Nothing waits long:
start-up checks the file with a 1 s timeout, later operations wait at most ``BUSY_TIMEOUT_S``.
"""

from __future__ import annotations

import csv
import io
import logging
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
BUSY_TIMEOUT_S = 5.0  # a write waits this long for another writer (a write takes milliseconds)
CHECK_TIMEOUT_S = 1.0  # ... and start-up this long for a locked file
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


log = logging.getLogger("mmdemo.evaluation.ratings")


class RatingsUnavailable(Exception):
    """The ratings file cannot be used now; the message says why and names the file (not its
    folder), in the words shown to a visitor."""


def export_all() -> bool:
    """MMDEMO_RATINGS_EXPORT_ALL=1: the app's ratings export and summary hold every rater's
    ratings (a host's own deployment); by default each visitor gets only their own."""
    return os.environ.get("MMDEMO_RATINGS_EXPORT_ALL", "").strip().lower() in ("1", "true", "yes", "on")


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


class SchemaTooNew(ValueError):
    """The file was written by a newer release (left as it is)."""


class RatingStore:
    """Ratings in ``folder/ratings.sqlite``: created and migrated by the first write (or an
    existing file by the first use); until then reads find no ratings and nothing is written.

    ``problem`` is None while the file works, else the reason the ratings are off (the same
    message every operation then raises as ``RatingsUnavailable``). A corrupt file stays off
    until a restart (it has been moved aside); a locked one is tried again by each operation."""

    def __init__(self, folder: str | os.PathLike, timeout_s: float = BUSY_TIMEOUT_S):
        self.path = Path(folder) / FILE_NAME
        self.timeout_s = timeout_s
        self.problem: str | None = None
        self._corrupt = False
        self._logged: set[str] = set()
        self._ready = False
        self._ready_lock = threading.Lock()

    # -- failure isolation -------------------------------------------------------------------
    def check(self, timeout_s: float = CHECK_TIMEOUT_S) -> str | None:
        """Open (and migrate) an existing file with a short timeout, as start-up does; the
        problem, or None when the ratings work. A missing file is fine (made by the first write)."""
        if not self.path.is_file():
            return self.problem
        saved, self.timeout_s = self.timeout_s, timeout_s
        try:
            self._guarded(lambda: None)
        except RatingsUnavailable:
            pass
        finally:
            self.timeout_s = saved
        return self.problem

    def _guarded(self, operation):
        """Run ``operation`` on a ready file; a broken file turns the ratings off (see the
        module docstring) instead of raising sqlite's error."""
        if self._corrupt:
            raise RatingsUnavailable(self.problem)
        try:
            self._ensure()
            result = operation()
        except sqlite3.DatabaseError as e:
            raise RatingsUnavailable(self._failed(e)) from None
        except SchemaTooNew as e:
            raise RatingsUnavailable(self._off("newer", f"Ratings are off: {e}.")) from None
        except OSError as e:
            reason = e.strerror or type(e).__name__
            raise RatingsUnavailable(
                self._off("os", f"Ratings are off: {FILE_NAME} cannot be used ({reason}).")
            ) from None
        self.problem = None
        return result

    def _failed(self, error: sqlite3.DatabaseError) -> str:
        code = getattr(error, "sqlite_errorname", "") or ""
        if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in str(error):
            return self._off(
                "locked",
                f"Ratings are off for now: {FILE_NAME} is locked by another program (waited {self.timeout_s:g} s);"
                " try again later. The rest of the app works.",
            )
        if code.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")) or not isinstance(error, sqlite3.OperationalError):
            return self._move_aside(str(error))
        return self._off("sqlite", f"Ratings are off: {FILE_NAME} cannot be used ({error}).")

    def _off(self, kind: str, message: str) -> str:
        self.problem = message
        if kind not in self._logged:  # the full path, once per kind of problem
            self._logged.add(kind)
            log.warning("%s (%s)", message, self.path)
        return message

    def _move_aside(self, reason: str) -> str:
        with self._ready_lock:
            if not self._corrupt:
                stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                aside = self.path.with_name(f"{FILE_NAME}.corrupt-{stamp}")
                for suffix in ("", "-wal", "-shm"):  # the journal belongs to the file it journals
                    source = Path(f"{self.path}{suffix}")
                    if source.exists():
                        try:
                            source.rename(f"{aside}{suffix}")
                        except OSError:
                            log.warning("could not move %s aside", source)
                self._corrupt = True
                self._ready = False
                self._off(
                    "corrupt",
                    f"Ratings are off: {FILE_NAME} is not a readable ratings database ({reason}); it was moved aside"
                    f" as {aside.name}, and a restart begins a new one. The rest of the app works.",
                )
        return self.problem or ""

    # -- the file ----------------------------------------------------------------------------
    def _ensure(self) -> None:
        with self._ready_lock:
            if not self._ready:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._migrate()
                self._ready = True

    def _connect(self) -> sqlite3.Connection:
        # autocommit mode: transactions are the explicit BEGIN ... COMMIT below
        conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
        conn.row_factory = sqlite3.Row
        return conn

    def _migrate(self) -> None:
        with closing(self._connect()) as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == SCHEMA_VERSION:  # the usual case: no write lock needed
                return
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then see it done
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise SchemaTooNew(
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
        def version() -> int:
            with closing(self._connect()) as conn:
                return conn.execute("PRAGMA user_version").fetchone()[0]

        return self._guarded(version)

    def add(self, rating: Rating) -> int:
        """Store one rating (validated); returns its id."""
        r = rating.validated()

        def insert() -> int:
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

        return self._guarded(insert)

    @staticmethod
    def _where(checkpoint: str | None, rater: str | None) -> tuple[str, tuple]:
        conditions = [(name, value) for name, value in (("checkpoint", checkpoint), ("rater", rater)) if value]
        if not conditions:
            return "", ()
        return " WHERE " + " AND ".join(f"{name} = ?" for name, _ in conditions), tuple(v for _, v in conditions)

    def all(self, checkpoint: str | None = None, rater: str | None = None) -> list[dict]:
        """The ratings, oldest first: of one checkpoint and/or one rater when given."""
        if not self.path.is_file() and not self._corrupt:
            return []
        where, values = self._where(checkpoint, rater)

        def select() -> list[dict]:
            with closing(self._connect()) as conn:
                return [dict(row) for row in conn.execute(f"SELECT * FROM ratings{where} ORDER BY id", values)]

        return self._guarded(select)

    def export_csv(self, out: str | os.PathLike | None = None, rater: str | None = None) -> str:
        """The ratings (one rater's when given) as CSV, times in UTC (ISO 8601); written to
        ``out`` when given."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in self.all(rater=rater):
            row["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row["created_at"]))
            writer.writerow(row)
        text = buffer.getvalue()
        if out is not None:
            Path(out).write_text(text, encoding="utf-8")
        return text

    def summary(self, rater: str | None = None) -> dict[str, dict[str, int]]:
        """Per checkpoint: how many ratings of each kind, and in all (one rater's when given)."""
        if not self.path.is_file() and not self._corrupt:
            return {}
        where, values = self._where(None, rater)

        def count() -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = defaultdict(lambda: {**{r: 0 for r in RATINGS}, "total": 0})
            with closing(self._connect()) as conn:
                query = f"SELECT checkpoint, rating, COUNT(*) AS n FROM ratings{where} GROUP BY checkpoint, rating"
                for row in conn.execute(query, values):
                    out[row["checkpoint"]][row["rating"]] = row["n"]
                    out[row["checkpoint"]]["total"] += row["n"]
            return dict(sorted(out.items()))

        return self._guarded(count)
