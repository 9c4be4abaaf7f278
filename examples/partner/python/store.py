"""Where the receiver and the nightly job keep platescore results: one SQLite file.

Two rules make it idempotent:
- `webhook_messages` has one row per `webhook-id`. platescore sends the same id on every
  retry and redelivery of one message, so a repeat is recognised and only counted.
- `results` has one row per `job_id`, whoever stored it first: the receiver
  (`source = 'webhook'`, with the `webhook_id` it came in) or the nightly job
  (`source = 'nightly'`, for a job whose webhook had not arrived).

Replace it with your own database; keep the two unique keys.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal

SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_messages (
    webhook_id  TEXT PRIMARY KEY,        -- the webhook-id header
    job_id      TEXT,
    event_type  TEXT NOT NULL,
    received_at TEXT NOT NULL,
    repeats     INTEGER NOT NULL DEFAULT 0  -- later copies of the same message, ignored
);
CREATE TABLE IF NOT EXISTS results (
    job_id           TEXT PRIMARY KEY,
    client_reference TEXT,                -- your id for the job, given at enqueue
    status           TEXT NOT NULL,       -- succeeded | failed
    result           TEXT,                -- JSON: the ScoreResult, null for a failed job
    error            TEXT,                -- JSON: {code, message}, null for a succeeded job
    source           TEXT NOT NULL CHECK (source IN ('webhook', 'nightly')),
    webhook_id       TEXT REFERENCES webhook_messages (webhook_id),  -- null from the nightly job
    stored_at        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sync_state (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# What save_webhook did with a message.
Outcome = Literal["stored", "duplicate", "already_stored"]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), sort_keys=True)


class ResultStore:
    """Thread-safe within one process; WAL lets the receiver and the nightly job share the file."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def save_webhook(self, webhook_id: str, job: dict[str, Any]) -> Outcome:
        """Records a verified job.succeeded / job.failed message; `job` is its JSON body."""
        with self._transaction() as db:
            new = db.execute(
                "INSERT OR IGNORE INTO webhook_messages (webhook_id, job_id, event_type, received_at)"
                " VALUES (?, ?, ?, ?)",
                (webhook_id, job["job_id"], job["type"], _now()),
            ).rowcount
            if not new:
                db.execute("UPDATE webhook_messages SET repeats = repeats + 1 WHERE webhook_id = ?", (webhook_id,))
                return "duplicate"
            return "stored" if self._insert_result(db, job, "webhook", webhook_id) else "already_stored"

    def save_fetched(self, job: dict[str, Any]) -> bool:
        """Stores a finished job fetched from the API (GET /jobs) unless it is stored already."""
        with self._transaction() as db:
            return self._insert_result(db, job, "nightly", None)

    @staticmethod
    def _insert_result(db: sqlite3.Connection, job: dict[str, Any], source: str, webhook_id: str | None) -> bool:
        return bool(
            db.execute(
                "INSERT OR IGNORE INTO results"
                " (job_id, client_reference, status, result, error, source, webhook_id, stored_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job["job_id"],
                    job["request"].get("client_reference"),
                    job["status"],
                    _json(job.get("result")),
                    _json(job.get("error")),
                    source,
                    webhook_id,
                    _now(),
                ),
            ).rowcount
        )

    def get_state(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM sync_state WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_state(self, name: str, value: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO sync_state (name, value) VALUES (?, ?)", (name, value))

    def close(self) -> None:
        self._db.close()
