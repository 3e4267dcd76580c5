"""Sessions: a browser's login, a scoped token turned into an HttpOnly cookie.

The browser sends the token once (POST /ui/login); xeniad keeps the session in memory
(a restart logs everyone out, which is the safe direction) and gives the browser a random
session id in a cookie that is HttpOnly (scripts cannot read it), SameSite=Strict (no other
site's page makes the browser send it) and Secure on TLS. The session holds the token's
*name*: its scopes and patterns are read from the token registry on every request, so a
revoked token ends its sessions at once, and the UI can never do more than the token.

CSRF: a request that changes something must carry the session's CSRF token in the header
X-CSRF-Token (a form on another site cannot set headers); a WebSocket must come from a page
of this origin (its Origin header names this host). SameSite=Strict already keeps the
cookie off cross-site requests; the header is the second lock.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from xenia.errors import PermissionDenied, Unauthorized
from xenia.peers.scopes import Grant

COOKIE = "xenia_session"
CSRF_HEADER = "x-csrf-token"
IDLE_TIMEOUT = 30 * 60.0  # a session unused this long ends
MAX_AGE = 8 * 3600.0  # and none outlives a working day
MAX_SESSIONS = 1000  # the oldest go first beyond this

EXPIRED = ("Failed to authenticate the request: the session has expired or was ended; "
           "log in again with a token")
BAD_CSRF = ("Failed {method} {path}: the request lacks this session's CSRF token; reload the "
            "page (requests from other sites are refused)")
BAD_ORIGIN = ("Failed to open {path}: the WebSocket comes from another origin ({origin}); "
              "open it from this host's pages")


@dataclass
class Session:
    token: str  # the token's name
    csrf: str
    created: float = field(default_factory=time.time)
    seen: float = field(default_factory=time.time)

    def expires(self) -> float:
        return min(self.seen + IDLE_TIMEOUT, self.created + MAX_AGE)


def _key(sid: str) -> str:
    # Kept by hash: a dump of the daemon's memory layout or a log line shows no usable id.
    return hashlib.sha256(sid.encode()).hexdigest()


def header(scope: MutableMapping[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def cookie(scope: MutableMapping[str, Any], name: str = COOKIE) -> str | None:
    raw = header(scope, b"cookie")
    if raw is None:
        return None
    for part in raw.split(";"):
        k, _, v = part.strip().partition("=")
        if k == name and v:
            return v
    return None


class Sessions:
    """`grant_of(name)` -> the token's current Grant, or None once it is revoked."""

    def __init__(self, grant_of: Callable[[str], Grant | None],
                 clock: Callable[[], float] = time.time) -> None:
        self.grant_of = grant_of
        self.clock = clock
        self._by_key: dict[str, Session] = {}

    def open(self, grant: Grant) -> tuple[str, Session]:
        """A new session for a verified token: (the cookie's value, the session)."""
        self._expire()
        while len(self._by_key) >= MAX_SESSIONS:
            oldest = min(self._by_key, key=lambda k: self._by_key[k].seen)
            del self._by_key[oldest]
        sid = secrets.token_urlsafe(32)
        now = self.clock()
        sess = Session(grant.token, secrets.token_urlsafe(24), now, now)
        self._by_key[_key(sid)] = sess
        return sid, sess

    def close(self, sid: str) -> None:
        self._by_key.pop(_key(sid), None)

    def lookup(self, sid: str) -> Session | None:
        sess = self._by_key.get(_key(sid))
        if sess is None:
            return None
        now = self.clock()
        if now >= sess.expires():
            del self._by_key[_key(sid)]
            return None
        sess.seen = now
        return sess

    def _expire(self) -> None:
        now = self.clock()
        for k in [k for k, s in self._by_key.items() if now >= s.expires()]:
            del self._by_key[k]

    def authenticate(self, scope: MutableMapping[str, Any]) -> Grant | None:
        """TokenAuth's second way in: the Grant of the request's session cookie; None when
        the request has no cookie (TokenAuth then says no credentials). Unauthorized for an
        unknown or expired session or a revoked token; PermissionDenied for a change
        without the CSRF header or a WebSocket from another origin."""
        sid = cookie(scope)
        if sid is None:
            return None
        sess = self.lookup(sid)
        grant = self.grant_of(sess.token) if sess is not None else None
        if sess is None or grant is None:
            if sess is not None:
                self.close(sid)
            raise Unauthorized(EXPIRED)
        method = scope.get("method", "WEBSOCKET")
        path = scope.get("path", "")
        if scope["type"] == "websocket":
            origin = header(scope, b"origin")
            host = header(scope, b"host")
            if origin is None or host is None or origin.split("://", 1)[-1] != host:
                raise PermissionDenied(BAD_ORIGIN.format(path=path, origin=origin))
        elif method not in ("GET", "HEAD"):
            sent = header(scope, CSRF_HEADER.encode()) or ""
            if not hmac.compare_digest(sent.encode(), sess.csrf.encode()):
                raise PermissionDenied(BAD_CSRF.format(method=method, path=path))
        return grant


def cookie_header(sid: str, secure: bool, max_age: float = MAX_AGE) -> str:
    flags = f"{COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict; Max-Age={int(max_age)}"
    return flags + ("; Secure" if secure else "")


def clear_cookie_header(secure: bool) -> str:
    return cookie_header("", secure, 0)
