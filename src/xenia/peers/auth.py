"""TokenAuth: the ASGI middleware in front of the API on TCP: token, scope, audit.

The UNIX socket serves the bare app (it is root-only, so whoever reaches it is root on this
host); the TCP listener serves the same app wrapped in TokenAuth. Each request needs a
valid token (401 before routing otherwise: an unknown URL tells nothing); its Access goes
into the scope, where the app's `enforce` dependency (api/scopes.py's table) checks the
route's scope and the domain patterns (403 naming what is missing) before any handler, and
the handlers check what only they see (paths, names in bodies, lists). Every mutating
call, refused or not, goes to the audit log with its answer's status.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from xenia.errors import PermissionDenied, Unauthorized, XeniaError
from xenia.peers.scopes import Grant

if TYPE_CHECKING:
    from xenia.peers.audit import AuditLog

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

READS = ("GET", "HEAD")

NO_CREDENTIALS = (
    "Failed to authenticate the request: it carries no credentials; send the header "
    "`Authorization: Bearer <token>` with a token made on this host by "
    "`xenia host token create` (peers do this after `xenia host add ... --token`)"
)
BAD_TOKEN = (
    "Failed to authenticate the request: the token is not valid on this host (revoked, "
    "mistyped, or made on another host); make one here with `xenia host token create` "
    "and give it to the other host's `xenia host add ... --token`"
)


def bearer_token(scope: Scope) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if there is one."""
    for key, value in scope.get("headers", ()):
        if key.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


NOT_AUTHORIZED = (
    "Failed {method} {path}: this route is not open over TCP (it passed no scope check); "
    "use the host's local socket"
)


class TokenAuth:
    """`verify(token)` -> its Grant or None; `access(grant)` -> the Access handlers get
    (api/access.py); `audit`: where mutating calls are recorded."""

    def __init__(self, app: ASGIApp, verify: Callable[[str], Grant | None],
                 access: Callable[[Grant], Any], audit: AuditLog | None = None,
                 session: Callable[[Scope], Grant | None] | None = None) -> None:
        self.app = app
        self.verify = verify
        self.access = access
        self.audit = audit
        # The web UI's way in (ui/sessions.py): a session cookie instead of a bearer
        # token, then the very same checks. It raises for a bad session or CSRF.
        self.session = session

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "WEBSOCKET")
        path = scope.get("path", "")
        client = (scope.get("client") or ("?", 0))[0]
        token = bearer_token(scope)
        try:
            grant = self.verify(token) if token is not None else None
            if token is None and self.session is not None:
                grant = self.session(scope)  # raises for a bad session or CSRF
            if grant is None:
                raise Unauthorized(NO_CREDENTIALS if token is None else BAD_TOKEN)
        except XeniaError as err:
            log.warning("refused %s %s from %s: %s", method, path, client, err.message)
            if self.audit is not None and method not in READS:
                self.audit.record(token=None, client=client, method=method, route=path,
                                  path=path, domain=None, status=err.http_status)
            await _deny(scope, receive, send, err)
            return
        state = scope.setdefault("state", {})
        access = state["access"] = self.access(grant)
        state["peer_token"] = grant.token
        recorded = False

        def record(status: int) -> None:
            # Written when the answer starts, before the client can see it.
            nonlocal recorded
            if recorded:
                return
            recorded = True
            if status >= 400:
                log.warning("refused or failed %s %s from %s (token %s): %d", method, path,
                            client, grant.token, status)
            if self.audit is not None and method not in READS and state.get("audited", True):
                self.audit.record(token=grant.token, client=client, method=method,
                                  route=state.get("route", path), path=path,
                                  domain=access.domain, status=status,
                                  extra=state.get("audit_extra"))

        swallowed = False

        async def guarded(message: Message) -> None:
            # api/scopes.py's `enforce` marks the request authorized before any handler
            # runs; a success that did not pass it (a route that is not a path
            # operation) is replaced by a refusal: closed unless a rule opens it.
            nonlocal swallowed
            kind = message["type"]
            if kind in ("http.response.start", "websocket.accept"):
                status = int(message.get("status", 200))
                if not state.get("authorized") and status < 400:
                    swallowed = True
                    err = PermissionDenied(NOT_AUTHORIZED.format(method=method, path=path))
                    record(err.http_status)
                    await _deny(scope, receive, send, err, received=True)
                    return
                record(status)
            elif kind == "websocket.close":
                record(403)  # closed before the accept: refused (a close after is recorded)
            if not swallowed:
                await send(message)

        try:
            await self.app(scope, receive, guarded)
        finally:
            record(500)  # the app ended without an answer


async def _deny(scope: Scope, receive: Receive, send: Send, err: XeniaError,
                received: bool = False) -> None:
    if scope["type"] == "websocket":
        if not received:
            await receive()  # websocket.connect; closing before accept refuses the upgrade
        await send({"type": "websocket.close", "code": 1008, "reason": err.kind})
        return
    from starlette.responses import JSONResponse

    headers = {"WWW-Authenticate": 'Bearer realm="xeniad"'} if err.http_status == 401 else {}
    resp = JSONResponse({"error": err.kind, "message": err.message},
                        status_code=err.http_status, headers=headers)
    await resp(scope, receive, send)  # type: ignore[arg-type]
