"""The hosted teacher's cache of answers already received (SQLite in OUT/annotations), so a rerun asks no
question twice."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from pathlib import Path

from distillery.core.reserved import check_reserved
from distillery.core.rundir import guard_files, record_files, temporary_name

__all__ = ["CACHE_FILES", "RequestCache"]


CACHE_FILES = (
    "request_cache.sqlite",
    "request_cache.sqlite-journal",
)  # the cache in OUT/annotations and SQLite's journal


class RequestCache:
    """answers already received, keyed by everything that shapes the answer (SQLite)."""

    def __init__(self, path: Path):
        names = [path.name, f"{path.name}-journal"]
        for name in names:  # a link or a special file there is never opened, nor what it points to
            check_reserved(path.parent / name)
        guard_files(path.parent, names)  # a file of someone else's by those names is never opened as the cache
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():  # made whole under a temporary name, recorded as ours, then moved into place
            staged = path.with_name(temporary_name(path.name))
            check_reserved(staged)
            staged.unlink(missing_ok=True)
            with contextlib.closing(sqlite3.connect(staged)) as db:
                db.execute("CREATE TABLE answers (key TEXT PRIMARY KEY, body TEXT)")
                db.commit()
            record_files(path.parent, names)  # the journal is SQLite's companion of the file now whole
            os.replace(staged, path)
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, body TEXT)")

    @staticmethod
    def key(request: dict) -> str:
        return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        row = self.db.execute("SELECT body FROM answers WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, body: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?)", (key, json.dumps(body)))
        self.db.commit()

    def clear(self) -> None:
        """Forget every answer (``--restart-annotations``)."""
        self.db.execute("DELETE FROM answers")
        self.db.commit()
