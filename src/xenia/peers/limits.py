"""Bounds on the TCP listener: connections, header and body time, body size.

uvicorn alone holds a connection that never finishes its headers for ever (it has a
keep-alive timeout only between requests), accepts any number of connections, and
reads any body size. On TCP, where anyone who can reach the port can try, xeniad adds:

* `GuardedH11Protocol` (uvicorn's h11 protocol, subclassed): at most `connections`
  connections, `per_client` of them from one address (more are closed at once); a
  request's headers must be complete `header_timeout` seconds after its first byte
  (or after the connection opened), its body `body_timeout` after the headers; a
  connection past either is answered 408 and closed. Headers are at most
  `header_bytes` (h11's own bound; past it the answer is 400).
* `BodyLimit` (ASGI middleware): a body above `max_body` bytes is answered 413 without
  being read (by Content-Length) or as soon as it passes the bound (chunked).

All of it runs on the daemon's event loop at the cost of a timer a connection, so slow
clients take no CPU from the UNIX socket's requests or from QMP. The numbers can be
changed with environment variables (XENIA_TCP_*), for tests and unusual peers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import MutableMapping
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from xenia.errors import InvalidConfig
from xenia.peers.auth import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

_TIMEOUT_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n"
                b"connection: close\r\ncontent-length: 16\r\n\r\nRequest Timeout\n")


@dataclass(frozen=True)
class Limits:
    connections: int = 128
    per_client: int = 32
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    header_bytes: int = 16 * 1024
    # Request bodies are JSON (configs, records); 1 MiB is the cap of a config file too.
    max_body: int = 1024 * 1024

    @classmethod
    def from_env(cls, env: MutableMapping[str, str] | None = None) -> Limits:
        env = os.environ if env is None else env
        d = cls()

        def num(name: str, default: float) -> float:
            text = env.get(f"XENIA_TCP_{name}")
            try:
                return float(text) if text else default
            except ValueError:
                log.warning("ignoring XENIA_TCP_%s=%r: not a number", name, text)
                return default

        return cls(connections=int(num("MAX_CONNECTIONS", d.connections)),
                   per_client=int(num("MAX_PER_CLIENT", d.per_client)),
                   header_timeout=num("HEADER_TIMEOUT", d.header_timeout),
                   body_timeout=num("BODY_TIMEOUT", d.body_timeout),
                   header_bytes=int(num("HEADER_BYTES", d.header_bytes)),
                   max_body=int(num("MAX_BODY", d.max_body)))


class _Quiet:
    """At most one log line per `every` seconds for a kind of event, with a count."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.last: dict[str, float] = {}
        self.count: dict[str, int] = {}

    def warn(self, kind: str, message: str) -> None:
        self.count[kind] = self.count.get(kind, 0) + 1
        now = time.monotonic()
        if now - self.last.get(kind, -self.every) >= self.every:
            n = self.count.pop(kind)
            self.last[kind] = now
            log.warning("%s%s", message, f" ({n} since the last such message)" if n > 1 else "")


_quiet = _Quiet()


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with connection counts and header/body deadlines."""

    limits = Limits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._timer: asyncio.TimerHandle | None = None
        self._stage = ""
        super().connection_made(transport)
        host = self.client[0] if self.client else None
        same = sum(1 for c in self.connections if _client_host(c) == host)
        if len(self.connections) > self.limits.connections or same > self.limits.per_client:
            _quiet.warn("full", f"TCP API: refused a connection from {host}: "
                                f"{len(self.connections) - 1} open, {same - 1} from it "
                                f"(limits {self.limits.connections}, "
                                f"{self.limits.per_client} a client)")
            transport.abort()
            return
        self._arm("header", self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Idle until the next request: uvicorn's keep-alive timeout applies.
        self._disarm()
        self._follow()

    def _follow(self) -> None:
        """Arm the deadline of the stage the request is in, after h11 read more."""
        if self.transport is None or self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            # Waiting for headers. A keep-alive connection that has sent nothing yet is
            # uvicorn's keep-alive timer's; once bytes of a request came, ours.
            if self.timeout_keep_alive_task is None and self._stage != "header":
                self._arm("header", self.limits.header_timeout)
        elif state is h11.SEND_BODY:
            if self._stage != "body":
                self._arm("body", self.limits.body_timeout)
        else:
            self._disarm()  # the whole request is in: the handler's time is not bounded

    def _arm(self, stage: str, seconds: float) -> None:
        self._disarm()
        self._stage = stage
        self._timer = self.loop.call_later(seconds, self._expired, stage)

    def _disarm(self) -> None:
        if getattr(self, "_timer", None) is not None:
            assert self._timer is not None
            self._timer.cancel()
        self._timer = None
        self._stage = ""

    def _expired(self, stage: str) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        host = self.client[0] if self.client else "?"
        seconds = self.limits.header_timeout if stage == "header" else self.limits.body_timeout
        _quiet.warn(stage, f"TCP API: closed a connection from {host}: its request's "
                           f"{stage} did not arrive within {seconds:g} s")
        if self.cycle is None or self.cycle.response_complete or not (
                self.cycle.response_started):
            self.transport.write(_TIMEOUT_408)
        self.transport.close()


def _client_host(protocol: object) -> str | None:
    client = getattr(protocol, "client", None)
    return str(client[0]) if client else None


def guarded_protocol(limits: Limits) -> type[GuardedH11Protocol]:
    """The protocol class uvicorn instantiates per connection, bound to `limits`."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})


class BodyLimit:
    """ASGI middleware: a request body above `max_body` bytes is a 413, never read whole.

    The body is read here (up to the bound) before the app runs, so a chunked body that
    grows past it is refused before the app sees any of it."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # A disconnect: the app gets it as its first message.
                chunks = []
                pending = [message]
                break
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body:
                await self._refuse(send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                pending = [{"type": "http.request", "body": b"".join(chunks),
                            "more_body": False}]
                break

        async def replay() -> Message:
            if pending:
                return pending.pop()
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        err = InvalidConfig(f"Failed to read the request: its body is larger than "
                            f"{self.max_body} bytes, the most xeniad takes over TCP")
        # The API's error JSON (api/app.py's error_body), with 413.
        body = json.dumps({"error": err.kind, "message": err.message}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
