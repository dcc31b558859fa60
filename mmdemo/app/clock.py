"""One clock per fine-tune job: the time a job spent waiting in the queue, preparing and running,
summed over every segment (the first run and each resume), and the time it has left.

The server and the worker both write a job's record, so both mark its phases here, on one clock:
wall time (``time.time()``), never a process's own monotonic clock or start time, so a figure
one of them wrote still means the same to the other. Each phase change closes the open phase
(its seconds are added to its sum) and opens the next; a finished job has no open phase, and
the pause between a stop and a Resume counts nowhere. Elapsed time is the sum, so it never goes
back at a worker's start or a resume and never goes negative (a wall clock stepped back adds 0).

The time left comes from the rate measured in this segment's training: progress per second of
running time since its first step was reported (that step carries the warm-up), once
``MIN_RATE_PROGRESS`` of the run and ``MIN_RATE_S`` have passed; capped by what is left of the
time budget. Before there is a rate there is none to show (the plan's estimate stands instead).
"""

from __future__ import annotations

import time

PHASES = {"queued": "waiting", "preparing": "preparing", "running": "running"}  # state -> its sum
MIN_RATE_PROGRESS = 0.02  # of the whole run, trained in this segment, before a rate is trusted
MIN_RATE_S = 2.0  # seconds of training in this segment, likewise


def _sums(record: dict) -> dict:
    return record.setdefault("clock", {"waiting": 0.0, "preparing": 0.0, "running": 0.0})


def enter(record: dict, state: str, now: float | None = None) -> None:
    """Set the record's ``state``: the open phase's time is added to its sum and the phase of
    ``state`` opens (none for a finished state). Call it for every state change."""
    now = time.time() if now is None else now
    sums = _sums(record)
    since, phase = record.get("phase_since") or 0.0, record.get("phase")
    if phase in sums and since:
        sums[phase] += max(0.0, now - since)
    record["state"] = state
    record["phase"] = PHASES.get(state)
    record["phase_since"] = now if record["phase"] else 0.0


def times(record: dict, now: float | None = None) -> dict:
    """Seconds spent ``waiting``, ``preparing`` and ``running`` (all segments, the open phase up to
    ``now``), and ``elapsed``: their sum."""
    now = time.time() if now is None else now
    if "clock" not in record:  # a record written before the job clock: one span, as it was measured
        span = max(0.0, (record.get("finished") or now) - record["started"]) if record.get("started") else 0.0
        return {"waiting": 0.0, "preparing": 0.0, "running": round(span, 1), "elapsed": round(span, 1)}
    out = dict(record["clock"])
    phase, since = record.get("phase"), record.get("phase_since") or 0.0
    if phase in out and since:
        out[phase] += max(0.0, now - since)
    out = {k: round(v, 1) for k, v in out.items()}
    out["elapsed"] = round(out["waiting"] + out["preparing"] + out["running"], 1)
    return out


def start_rate(record: dict, now: float | None = None) -> None:
    """Mark the first training step of a segment: the rate is measured from here."""
    record["rate_since"] = time.time() if now is None else now
    record["rate_progress"] = record.get("progress", 0.0)


def time_left(record: dict, now: float | None = None) -> float | None:
    """Seconds the running job has left at the rate measured so far in this segment (at most what
    is left of its time budget); None while it is not running or has no rate yet."""
    now = time.time() if now is None else now
    since = record.get("rate_since") or 0.0
    if record.get("state") != "running" or not since:
        return None
    done, spent = record["progress"] - record.get("rate_progress", 0.0), now - since
    if done < MIN_RATE_PROGRESS or spent < MIN_RATE_S:
        return None
    left = (1.0 - record["progress"]) * spent / done
    budget_since, budget = record.get("budget_since") or 0.0, record.get("time_limit_s") or 0.0
    if budget_since and budget:
        left = min(left, budget - (now - budget_since))
    return round(max(0.0, left), 1)
