"""RingHandler: xeniad's recent log lines kept in memory, for `xenia dmesg` (xl dmesg
shows the hypervisor's ring buffer; Xenia's nearest is the daemon's own log)."""

from __future__ import annotations

import collections
import logging
import threading

MAX_LINES = 2000


class RingHandler(logging.Handler):
    def __init__(self, max_lines: int = MAX_LINES) -> None:
        super().__init__()
        self._lines: collections.deque[str] = collections.deque(maxlen=max_lines)
        self._mutex = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - a log call must never fail its caller
            self.handleError(record)
            return
        with self._mutex:
            self._lines.extend(text.splitlines() or [""])

    def lines(self, clear: bool = False) -> list[str]:
        with self._mutex:
            out = list(self._lines)
            if clear:
                self._lines.clear()
        return out


RING = RingHandler()
