"""AuditLog: one JSON line for every mutating API call over TCP, and the same in the log.

The file (`<state>/audit.log`, 0600) is append-only from here: each record is one write()
of one line on an O_APPEND descriptor, so lines never interleave. Reads are not recorded
(they change nothing, and a peer polls GET /v1/host); refused mutating calls are (401/403:
someone tried). Rotation is left to logrotate (`copytruncate`, as the file is kept open).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("xenia.audit")

MODE = 0o600


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, MODE)
        os.fchmod(self._fd, MODE)  # an older file may have had another mode

    def record(self, *, token: str | None, client: str | None, method: str, route: str,
               path: str, domain: str | None, status: int,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """`extra`: what a route adds (a cluster forward: the request it ran)."""
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": token,
                 "client": client, "method": method, "route": route, "path": path,
                 "domain": domain, "status": status, **(extra or {})}
        line = json.dumps(entry, sort_keys=False) + "\n"
        with self._lock:
            try:
                os.write(self._fd, line.encode())
            except OSError as e:
                log.error("Failed to write the audit log %s: %s", self.path, e)
        log.info("audit: token=%s client=%s %s %s domain=%s -> %d", token, client, method,
                 path, domain, status)
        return entry

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
