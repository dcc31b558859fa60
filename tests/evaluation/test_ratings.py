"""Ratings in SQLite: schema version and migrations, CSV export (one rater's or all), persistence,
concurrent writers (threads and processes) losing nothing, and a locked or corrupt file that turns
the ratings off quickly, naming the file, without raising sqlite's error."""

import csv
import io
import multiprocessing
import os
import sqlite3
import threading
import time

import pytest

from mmdemo.app.settings import data_dir
from mmdemo.evaluation import ratings
from mmdemo.evaluation.ratings import Rating, RatingStore


def _rating(i=0, rater="v1", checkpoint="sort-of-clevr", rating="right", comment=""):
    return Rating(rater, checkpoint, f"hash{i}", f"img{i}.png", f"question {i}?", "circle", "raw", rating, comment)


def test_add_export_and_summary(tmp_path):
    store = RatingStore(tmp_path)
    assert not (tmp_path / "ratings.sqlite").exists() and store.all() == [] and store.summary() == {}
    store.add(_rating(1, comment='points at the red one, "mostly"'))
    store.add(_rating(2, rating="partly"))
    store.add(_rating(3, checkpoint="mine", rating="wrong"))
    rows = list(csv.DictReader(io.StringIO(store.export_csv(tmp_path / "out.csv"))))
    assert [r["rating"] for r in rows] == ["right", "partly", "wrong"]
    assert rows[0]["comment"] == 'points at the red one, "mostly"' and rows[0]["image_hash"] == "hash1"
    assert list(rows[0]) == list(ratings.FIELDS) and rows[0]["created_at"].endswith("Z")
    assert (tmp_path / "out.csv").read_text() == store.export_csv()
    assert store.summary() == {
        "mine": {"right": 0, "partly": 0, "wrong": 1, "total": 1},
        "sort-of-clevr": {"right": 1, "partly": 1, "wrong": 0, "total": 2},
    }
    # a new store on the same folder (an app restart) sees them all
    assert len(RatingStore(tmp_path).all()) == 3


def test_bad_ratings_are_refused(tmp_path):
    store = RatingStore(tmp_path)
    with pytest.raises(ValueError, match="rating must be one of right, partly, wrong"):
        store.add(_rating(rating="great"))
    with pytest.raises(ValueError, match="over the limit of 2,000"):
        store.add(_rating(comment="x" * 2001))
    with pytest.raises(ValueError, match="needs its question"):
        store.add(Rating("v", "c", "h", "n", " ", "p", "raw", "right"))
    assert store.all() == []


def test_schema_version_and_migration(tmp_path):
    store = RatingStore(tmp_path)
    store.add(_rating())
    assert store.schema_version() == ratings.SCHEMA_VERSION == 1
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # an empty file of version 0 is migrated when opened
    empty = tmp_path / "old"
    empty.mkdir()
    sqlite3.connect(empty / "ratings.sqlite").close()
    assert RatingStore(empty).schema_version() == 1
    # a file from a newer release is refused, not damaged
    newer = tmp_path / "newer"
    newer.mkdir()
    with sqlite3.connect(newer / "ratings.sqlite") as conn:
        conn.execute("PRAGMA user_version = 7")
    store = RatingStore(newer)
    assert store.check() == "Ratings are off: ratings.sqlite has schema version 7, newer than this release's 1."
    with pytest.raises(ratings.RatingsUnavailable, match="schema version 7, newer than this release's 1"):
        store.add(_rating())
    with sqlite3.connect(newer / "ratings.sqlite") as conn:  # left as it was
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 7


def test_ratings_live_in_the_one_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MMDEMO_DATA_DIR", str(tmp_path / "d"))
    assert data_dir() == tmp_path / "d"
    monkeypatch.delenv("MMDEMO_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "user-data"))
    if not (os.path.isdir("/data") and os.access("/data", os.W_OK)):  # a persistent folder, not a cache
        assert data_dir() == tmp_path / "user-data" / "mmdemo"


def test_concurrent_threads_lose_nothing(tmp_path):
    store = RatingStore(tmp_path)
    errors = []

    def rate(worker):
        try:
            for i in range(25):
                store.add(_rating(i, rater=f"t{worker}"))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=rate, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = store.all()
    assert len(rows) == 200 and len({r["id"] for r in rows}) == 200
    assert {(r["rater"], r["question"]) for r in rows} == {
        (f"t{w}", f"question {i}?") for w in range(8) for i in range(25)
    }


def _rate_in_process(folder, worker):
    store = RatingStore(folder)
    for i in range(20):
        store.add(_rating(i, rater=f"p{worker}"))


def test_concurrent_processes_lose_nothing(tmp_path):
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_rate_in_process, args=(str(tmp_path), w)) for w in range(4)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(120)
    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    rows = RatingStore(tmp_path).all()
    assert len(rows) == 80
    assert {(r["rater"], r["question"]) for r in rows} == {
        (f"p{w}", f"question {i}?") for w in range(4) for i in range(20)
    }


def test_export_and_summary_of_one_rater(tmp_path):
    store = RatingStore(tmp_path)
    store.add(_rating(1, rater="a-alice", comment="alice's note"))
    store.add(_rating(2, rater="a-bob", comment="bob's note", rating="wrong"))
    mine = list(csv.DictReader(io.StringIO(store.export_csv(rater="a-alice"))))
    assert [(r["rater"], r["comment"]) for r in mine] == [("a-alice", "alice's note")]
    assert store.summary(rater="a-bob") == {"sort-of-clevr": {"right": 0, "partly": 0, "wrong": 1, "total": 1}}
    assert store.summary()["sort-of-clevr"]["total"] == 2 and len(store.all()) == 2
    assert store.all(checkpoint="sort-of-clevr", rater="a-nobody") == []


def test_export_all_is_a_host_setting(monkeypatch):
    monkeypatch.delenv("MMDEMO_RATINGS_EXPORT_ALL", raising=False)
    assert not ratings.export_all()
    monkeypatch.setenv("MMDEMO_RATINGS_EXPORT_ALL", "1")
    assert ratings.export_all()


def _lock(path):
    """Another program holding the file: an exclusive lock that blocks readers too."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("UPDATE ratings SET comment = comment")
    return conn


def test_a_locked_file_turns_ratings_off_quickly_and_back_on_when_free(tmp_path, caplog):
    RatingStore(tmp_path).add(_rating(1))
    holder = _lock(tmp_path / "ratings.sqlite")
    started = time.monotonic()
    store = RatingStore(tmp_path, timeout_s=0.2)
    problem = store.check()  # as the app's start-up does
    assert time.monotonic() - started < 3
    assert problem.startswith("Ratings are off for now: ratings.sqlite is locked by another program")
    assert str(tmp_path) not in problem
    with pytest.raises(ratings.RatingsUnavailable, match="ratings.sqlite is locked"):
        store.add(_rating(2))
    with pytest.raises(ratings.RatingsUnavailable, match="ratings.sqlite is locked"):
        store.summary()
    logged = [r.getMessage() for r in caplog.records if r.name == "mmdemo.evaluation.ratings"]
    assert len(logged) == 1 and str(tmp_path / "ratings.sqlite") in logged[0]  # the path, once
    holder.rollback() if holder.in_transaction else None
    holder.close()
    assert store.add(_rating(2)) == 2 and store.problem is None
    assert len(store.all()) == 2


def test_a_corrupt_file_is_moved_aside_and_ratings_stay_off(tmp_path):
    (tmp_path / "ratings.sqlite").write_bytes(b"this is not a database, just bytes" * 100)
    store = RatingStore(tmp_path)
    problem = store.check()
    aside = [p.name for p in tmp_path.iterdir() if p.name.startswith("ratings.sqlite.corrupt-")]
    assert len(aside) == 1 and not (tmp_path / "ratings.sqlite").exists()
    assert (tmp_path / aside[0]).read_bytes().startswith(b"this is not a database")
    assert problem.startswith("Ratings are off: ratings.sqlite is not a readable ratings database")
    assert aside[0] in problem and str(tmp_path) not in problem
    with pytest.raises(ratings.RatingsUnavailable, match="moved aside"):
        store.add(_rating(1))
    with pytest.raises(ratings.RatingsUnavailable, match="moved aside"):
        store.export_csv()
    assert not (tmp_path / "ratings.sqlite").exists()  # off until a restart: nothing written meanwhile
    assert RatingStore(tmp_path).add(_rating(1)) == 1  # the next start begins a new file
