"""Watch: every change under a key prefix, in order, across member failures.

A thread of its own holds one streaming POST /v3/watch on the gateway. When the stream
ends (the member died, was cut off, lost its leader: the `hasleader` metadata makes etcd
cancel the watches of a member without a leader, or the stream stayed silent past
read_timeout), the thread opens a new one on the next endpoint that starts at the revision
after the last one delivered: no change is lost or delivered twice. etcd sends a progress
notification on a quiet stream (xenia's members every PROGRESS_INTERVAL; etcd's default is
10 min, so on an external cluster a quiet stream is merely reopened every read_timeout).

If the revision to resume from was compacted away, on_compacted(compact_revision) is
called: the caller reads the prefix afresh and returns the revision to go on from (its
read revision + 1); without the callback the watch stops and says why in `error`.

Callbacks run in the watch thread: keep them short (hand over to a queue or
loop.call_soon_threadsafe).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import requests

from xenia.cluster.client import EtcdClient
from xenia.cluster.kv import Event, b64, prefix_end

log = logging.getLogger(__name__)

# Progress notifications of the members xeniad runs (etcd_member.py passes it to etcd).
PROGRESS_INTERVAL = 2.0
READ_TIMEOUT = 3 * PROGRESS_INTERVAL
_RETRY_MIN, _RETRY_MAX = 0.1, 2.0


class _Compacted(Exception):
    def __init__(self, revision: int) -> None:
        super().__init__(revision)
        self.revision = revision


class Watch:
    def __init__(self, client: EtcdClient, prefix: str,
                 on_events: Callable[[list[Event]], None], start_revision: int = 0,
                 prev_kv: bool = False, read_timeout: float = READ_TIMEOUT,
                 on_compacted: Callable[[int], int] | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.on_events = on_events
        self.on_compacted = on_compacted
        self.prev_kv = prev_kv
        self.read_timeout = read_timeout
        # The first revision not yet delivered (0 until the first stream says "now").
        self.next_revision = start_revision
        self.reconnects = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._resp: requests.Response | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"etcd-watch {prefix}",
                                        daemon=True)
        self._opened = threading.Event()

    def start(self, wait: float = 5.0) -> Watch:
        """Start; wait up to `wait` s for the first stream, so that every change made after
        start() returns is seen (unless no member answered in that time)."""
        self._thread.start()
        self._opened.wait(wait)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            resp = self._resp
        if resp is not None:
            _shutdown(resp)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        delay = _RETRY_MIN
        while not self._stop.is_set():
            url = self.client.pick()
            try:
                self._stream(url)
                delay = _RETRY_MIN  # a stream that ended in order: reopen at once
            except _Compacted as e:
                if self.on_compacted is None:
                    self.error = (f"the watch of {self.prefix} fell behind etcd's compaction "
                                  f"(revision {e.revision}); read the keys afresh")
                    log.error("%s", self.error)
                    return
                self.next_revision = self.on_compacted(e.revision)
            except (requests.RequestException, OSError, ValueError, KeyError) as e:
                if self._stop.is_set():
                    return
                self.client.mark_failed(url)
                log.info("watch of %s on %s ended (%s); reopening from revision %d",
                         self.prefix, url, e, self.next_revision)
                self._stop.wait(delay)
                delay = min(delay * 2, _RETRY_MAX)
            self.reconnects += 1

    def _stream(self, url: str) -> None:
        create: dict[str, Any] = {"key": b64(self.prefix),
                                  "range_end": b64(prefix_end(self.prefix)),
                                  "progress_notify": True}
        if self.next_revision:
            create["start_revision"] = self.next_revision
        if self.prev_kv:
            create["prev_kv"] = True
        session = self.client.session_for(url)
        resp = session.post(url + "/v3/watch", json={"create_request": create}, stream=True,
                            timeout=(self.client.timeouts.connect, self.read_timeout))
        with self._lock:
            self._resp = resp
        try:
            if self._stop.is_set():
                return
            if resp.status_code != 200:
                raise ValueError(f"HTTP {resp.status_code}: {resp.text[:200]}")
            for line in resp.iter_lines():
                if self._stop.is_set():
                    return
                if line:
                    self._message(json.loads(line))
            raise ValueError("the stream ended")
        finally:
            with self._lock:
                self._resp = None
            resp.close()

    def _message(self, msg: dict[str, Any]) -> None:
        if "error" in msg:
            raise ValueError(str(msg["error"].get("message", msg["error"])))
        result = msg["result"]
        header_rev = int(result.get("header", {}).get("revision", 0))
        if result.get("canceled"):
            compact = int(result.get("compact_revision", 0))
            if compact:
                raise _Compacted(compact)
            raise ValueError(f"etcd canceled the watch: {result.get('cancel_reason', '')}")
        if result.get("created"):
            # Watching from "now": the stream's own revision is where "now" is.
            if not self.next_revision:
                self.next_revision = header_rev + 1
            self._opened.set()
            return
        events = [Event.from_json(e) for e in result.get("events", [])]
        if events:
            self.on_events(events)
            self.next_revision = events[-1].kv.mod_revision + 1
        elif header_rev:
            # A progress notification: everything up to header_rev has been sent.
            self.next_revision = max(self.next_revision, header_rev + 1)


def _shutdown(resp: requests.Response) -> None:
    """Wake the thread blocked reading `resp` by shutting its socket down under it."""
    raw = resp.raw
    conn = getattr(raw, "_connection", None) or getattr(raw, "connection", None)
    sock = getattr(conn, "sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            # The plain socket's shutdown: SSLSocket.shutdown would drop its SSL object
            # while the other thread is inside a read on it.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        resp.close()
