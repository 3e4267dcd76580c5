"""TokenAuth: the ASGI middleware in front of the API on TCP; every request needs a token.

The UNIX socket serves the bare app (it is root-only, so whoever reaches it is root on this
host); the TCP listener serves the same app wrapped in TokenAuth. Token and peer management
stay on the UNIX socket even for valid tokens: a leaked token must not be able to mint a
new one that outlives its revocation, nor read or change this host's peers.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from xenia.errors import PermissionDenied, Unauthorized, XeniaError

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Routes answered only on the local socket (api/peers.py).
LOCAL_ONLY = ("/v1/host/tokens", "/v1/peers")

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


def is_local_only(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in LOCAL_ONLY)


class TokenAuth:
    def __init__(self, app: ASGIApp, verify: Callable[[str], str | None]) -> None:
        self.app = app
        self.verify = verify

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "WEBSOCKET")
        path = scope.get("path", "")
        token = bearer_token(scope)
        err: XeniaError | None = None
        name: str | None = None
        if token is None:
            err = Unauthorized(NO_CREDENTIALS)
        else:
            name = self.verify(token)
            if name is None:
                err = Unauthorized(BAD_TOKEN)
            elif is_local_only(path):
                err = PermissionDenied(
                    f"Failed {method} {path}: tokens and peers are managed only on the host "
                    "itself, over its local socket (run `xenia host ...` as root there)"
                )
        if err is not None:
            client = scope.get("client") or ("?", 0)
            log.warning("refused %s %s from %s: %s", method, path, client[0], err.kind)
            await _deny(scope, receive, send, err)
            return
        scope.setdefault("state", {})["peer_token"] = name
        await self.app(scope, receive, send)


async def _deny(scope: Scope, receive: Receive, send: Send, err: XeniaError) -> None:
    if scope["type"] == "websocket":
        await receive()  # websocket.connect; closing before accept refuses the upgrade
        await send({"type": "websocket.close", "code": 1008, "reason": err.kind})
        return
    from starlette.responses import JSONResponse

    headers = {"WWW-Authenticate": 'Bearer realm="xeniad"'} if err.http_status == 401 else {}
    resp = JSONResponse({"error": err.kind, "message": err.message},
                        status_code=err.http_status, headers=headers)
    await resp(scope, receive, send)  # type: ignore[arg-type]
