"""SqliteStore: the single-host state store (SQLite in WAL mode, synchronous=NORMAL).

The database and its -wal and -shm files are root-only (0600): they hold every domain's
config and the token hashes. SQLite gives the -wal/-shm files the database file's mode, so
the file is made 0600 before SQLite first opens it, and all three are set to 0600 at every
open (fixing a database an older Xenia made with the umask's mode).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from xenia.errors import AlreadyExists
from xenia.store import schema
from xenia.store.base import DomainRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS domains (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    domid INTEGER NOT NULL UNIQUE,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


FILE_MODE = 0o600


def protect(path: Path) -> None:
    """Make the database file (created if missing) and its -wal/-shm root-only."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE))
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(p, FILE_MODE)


class SqliteStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        protect(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        # Deleted and overwritten rows are zeroed, not left in free pages: a revoked
        # token's hash or an old record must not be readable from the file afterwards.
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives any crash of xeniad (it is in the WAL, in the
        # OS's hands) and the file is never corrupted; only a power cut can lose the last
        # commits, and a power cut takes every guest with it. FULL would add an fsync to
        # each state change (docs/decisions.md, "State store durability").
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def get(self, uuid: str) -> DomainRecord | None:
        with self._lock:
            row = self._db.execute("SELECT record FROM domains WHERE uuid=?", (uuid,)).fetchone()
        return DomainRecord.from_dict(json.loads(row[0])) if row else None

    def list(self) -> list[DomainRecord]:
        with self._lock:
            rows = self._db.execute("SELECT record FROM domains ORDER BY domid").fetchall()
        return [DomainRecord.from_dict(json.loads(r[0])) for r in rows]

    def put(self, rec: DomainRecord) -> None:
        data = json.dumps(rec.to_dict(), sort_keys=True)
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO domains(uuid, name, domid, record) VALUES(?,?,?,?) "
                    "ON CONFLICT(uuid) DO UPDATE SET name=excluded.name, "
                    "domid=excluded.domid, record=excluded.record",
                    (rec.uuid, rec.name, rec.domid, data),
                )
            except sqlite3.IntegrityError as e:
                raise AlreadyExists(
                    f"Failed to store domain '{rec.name}': a domain with that name or id "
                    "already exists"
                ) from e

    def delete(self, uuid: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM domains WHERE uuid=?", (uuid,))

    def next_domid(self) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT value FROM meta WHERE key='next_domid'").fetchone()
                domid = int(row[0]) if row else 1
                self._db.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES('next_domid', ?)",
                    (str(domid + 1),),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return domid

    # -- other objects (pools, volumes, networks, hosts): JSON documents by kind + name --
    def obj_get(self, kind: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT data FROM objects WHERE kind=? AND name=?", (kind, name)
            ).fetchone()
        return schema.read_object(kind, name, json.loads(row[0])) if row else None

    def obj_list(self, kind: str) -> builtins.list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, data FROM objects WHERE kind=? ORDER BY name", (kind,)
            ).fetchall()
        return [schema.read_object(kind, r[0], json.loads(r[1])) for r in rows]

    def obj_put(self, kind: str, name: str, data: dict[str, Any], *, create: bool = False) -> None:
        """Store a document; with create=True, AlreadyExists if the name is taken."""
        text = json.dumps(schema.stamp_object(kind, data), sort_keys=True)
        with self._lock:
            if create:
                try:
                    self._db.execute(
                        "INSERT INTO objects(kind, name, data) VALUES(?,?,?)", (kind, name, text)
                    )
                except sqlite3.IntegrityError as e:
                    raise AlreadyExists(
                        f"Failed to create {kind} '{name}': it exists already"
                    ) from e
            else:
                self._db.execute(
                    "INSERT OR REPLACE INTO objects(kind, name, data) VALUES(?,?,?)",
                    (kind, name, text),
                )

    def obj_delete(self, kind: str, name: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM objects WHERE kind=? AND name=?", (kind, name))

    def scrub(self) -> None:
        """Rewrite the file without free pages and empty the WAL, so that rows deleted or
        rewritten before secure_delete (e.g. peer tokens an older Xenia kept) are gone."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._lock:
            self._db.close()
