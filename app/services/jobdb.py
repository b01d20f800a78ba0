"""Where jobs outlive the process: the persistence interface and its SQLite implementation.

The embedded job store keeps live state (events, waiters, cancel flags) in memory and writes
every state change through a `JobPersistence`, so a restart finds each job as it was left.
(Servers that share their jobs use the Redis store instead: app/services/redisjobs.py.)
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass
class JobRecord:
    """A job as persisted: every field a restart needs, nothing live."""

    id: str
    owner: str | None
    status: str
    steps: int
    step: int
    losses: dict[str, float] | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    seconds: float | None
    error: dict[str, Any] | None
    options: dict[str, Any]
    params: dict[str, Any]
    result_path: str | None
    media_type: str | None
    next_event: int


class JobPersistence(Protocol):
    def load(self) -> list[JobRecord]:
        """Every persisted job, oldest first."""

    def save(self, record: JobRecord) -> None:
        """Insert or replace one job, durably once it returns."""

    def delete(self, job_id: str) -> None: ...

    def close(self) -> None: ...


_COLUMNS = ("id", "owner", "status", "steps", "step", "losses", "created_at", "started_at",
            "finished_at", "seconds", "error", "options", "params", "result_path",
            "media_type", "next_event")
_JSON_COLUMNS = frozenset({"losses", "error", "options", "params"})


class SqliteJobs:
    """Jobs in one SQLite file (WAL: readers never block the writer, a crash loses nothing
    that was committed). Used from the event loop thread only; each write is a few hundred
    microseconds on a local disk."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)  # autocommit per statement
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: durable across process crashes; a power cut may lose the
        # last transactions, which only ever concern progress counters.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, owner TEXT, status TEXT"
            " NOT NULL, steps INTEGER NOT NULL, step INTEGER NOT NULL, losses TEXT,"
            " created_at REAL NOT NULL, started_at REAL, finished_at REAL, seconds REAL,"
            " error TEXT, options TEXT NOT NULL, params TEXT NOT NULL, result_path TEXT,"
            " media_type TEXT, next_event INTEGER NOT NULL)")

    def load(self) -> list[JobRecord]:
        rows = self._db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM jobs ORDER BY created_at").fetchall()
        return [JobRecord(**{c: json.loads(v) if c in _JSON_COLUMNS and v is not None else v
                             for c, v in zip(_COLUMNS, row, strict=True)}) for row in rows]

    def save(self, record: JobRecord) -> None:
        values = [json.dumps(getattr(record, c)) if c in _JSON_COLUMNS
                  and getattr(record, c) is not None else getattr(record, c)
                  for c in _COLUMNS]
        self._db.execute(
            f"INSERT OR REPLACE INTO jobs ({', '.join(_COLUMNS)}) VALUES"
            f" ({', '.join('?' for _ in _COLUMNS)})", values)

    def delete(self, job_id: str) -> None:
        self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def close(self) -> None:
        self._db.close()
