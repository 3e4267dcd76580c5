"""The interactive console of a domain on another cluster member, relayed by this xeniad.

`xenia console DOM` opens the WebSocket /v1/domains/{ref}/console on its own xeniad (UNIX
socket). When DOM runs on member H, that route comes here: this xeniad opens the same
route on H over the member TLS channel, pinned to H's fingerprint, with this member's
credential (H checks its `cluster` scope, api/scopes.py), and copies binary messages both
ways. H's route relays the domain's serial console (a container's pty), as for the browser.

Errors reach the local client as one text message, JSON {"error": kind, "message": ...},
then a close with code 1011: a close reason is cut at 123 bytes and a refused WebSocket
upgrade carries none, so the message goes as data. Data is only ever binary messages; the
first, empty, says the member's console is connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, cast

from fastapi import WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus, WebSocketException

from xenia.api.forward import owner, raise_answer
from xenia.api.relaying import until_first
from xenia.errors import BackendError, Unreachable, XeniaError
from xenia.peers import fingerprint as fp
from xenia.peers.client import PeerClient, client_context

log = logging.getLogger(__name__)

OPEN_TIMEOUT = 10.0
CLOSE_BROKEN = 1011  # the relay broke or was refused (RFC 6455: an unexpected condition)


class _Pinned(ClientConnection):
    """A ClientConnection that checks the server's certificate against the pinned
    fingerprint once TLS is up (asyncio calls connection_made after the handshake) and
    drops the connection before the upgrade request, with its credential, is sent."""

    pinned = ""
    mismatch: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        tls = transport.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True) if tls is not None else None
        if der is None or not fp.matches(self.pinned, der):
            type(self).mismatch = fp.of_der(der) if der else "none"
            cast(asyncio.Transport, transport).abort()


async def open_upstream(peer: PeerClient, ref: str) -> ClientConnection:
    """The console WebSocket of `ref` on the member `peer` reaches; XeniaError when it
    cannot be had (unreachable, certificate not the pinned one, refused)."""
    # A class per connection: asyncio makes the instance, so the pin rides on its class.
    pinned = cast(type[_Pinned], type("_PinnedOnce", (_Pinned,),
                                      {"pinned": peer.fingerprint or ""}))
    scheme = "wss" if peer.tls else "ws"
    host = f"[{peer.host}]" if ":" in peer.host else peer.host
    uri = f"{scheme}://{host}:{peer.port}/v1/domains/{ref}/console"
    kw: dict[str, Any] = {"ssl": client_context(), "server_hostname": ""} if peer.tls else {}
    try:
        return await connect(
            uri, additional_headers={"Authorization": f"Bearer {peer.token}"},
            create_connection=cast(Any, pinned if peer.tls else ClientConnection),
            open_timeout=OPEN_TIMEOUT, compression=None, proxy=None, max_size=None, **kw)
    except InvalidStatus as e:
        raise BackendError(
            f"Failed to attach to the console of '{ref}': cluster member '{peer.name}' "
            f"refused it (HTTP {e.response.status_code}); check that the domain runs there "
            "and that this host is still a member (`xenia cluster status`)") from e
    except (OSError, TimeoutError, WebSocketException, EOFError) as e:
        if pinned.mismatch is not None:
            raise peer.mismatch(pinned.mismatch) from None
        raise Unreachable(f"Failed to attach to the console of '{ref}': cannot reach "
                          f"cluster member '{peer.name}' at {peer.address} ({e}); check "
                          "`xenia cluster status`") from e


async def _check_running(node: Any, host: str, ref: str) -> PeerClient:
    """The owner's own answer about `ref` (through the forward route, so not found and
    not running read as they do for every forwarded verb)."""
    peer: PeerClient = node.peer(host, timeout=OPEN_TIMEOUT)
    ans = await peer.arequest("POST", "/v1/cluster/forward",
                              {"method": "GET", "path": f"/v1/domains/{ref}", "body": None})
    if ans["status"] >= 400:
        raise_answer(ans, host)
    if not (ans.get("body") or {}).get("console"):
        raise BackendError(f"Failed to attach to the console of '{ref}': it is not running "
                           f"on cluster member '{host}'; start it first")
    return peer


async def _fail(ws: WebSocket, e: XeniaError) -> None:
    with contextlib.suppress(Exception):
        await ws.send_text(json.dumps({"error": e.kind, "message": e.message}))
        await ws.close(code=CLOSE_BROKEN)


async def relay(ws: WebSocket, node: Any, host: str, ref: str) -> None:
    """Copy between the local client's WebSocket and `ref`'s console on member `host`
    until either side ends; the end of one closes the other."""
    await ws.accept()
    try:
        up = await open_upstream(await _check_running(node, host, ref), ref)
    except XeniaError as e:
        log.info("console of %s on %s refused: %s", ref, host, e.message)
        await _fail(ws, e)
        return
    # One empty binary message: the member's console is connected. The CLI waits for it
    # before it says "Connected" (and `create -c` before it resumes the guest).
    await ws.send_bytes(b"")

    async def down() -> None:  # member -> local client
        async for msg in up:
            await ws.send_bytes(msg if isinstance(msg, bytes) else msg.encode())

    async def upward() -> None:  # local client -> member
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            await up.send(msg.get("bytes") or (msg.get("text") or "").encode())

    try:
        ended = (await until_first(down(), upward()))[0]
    finally:
        with contextlib.suppress(Exception):
            await up.close()
    broken: XeniaError | None = None
    if ended.done() and not ended.cancelled() and isinstance(ended.exception(),
                                                             ConnectionClosedError):
        broken = BackendError(f"Failed to relay the console of '{ref}': the connection to "
                              f"cluster member '{host}' broke ({ended.exception()})")
    if broken is not None:
        await _fail(ws, broken)
    else:
        with contextlib.suppress(Exception):
            await ws.close()


async def relay_if_remote(ws: WebSocket, ref: str) -> bool:
    """True when `ref` runs on another member and its console was relayed from there (the
    local socket's request on a cluster member only)."""
    node = getattr(ws.app.state, "cluster", None)
    if node is None or not node.is_member:
        return False
    if (ws.scope.get("state") or {}).get("access") is not None:
        return False
    try:
        host = await owner(node, ref)
    except XeniaError as e:  # e.g. two members have a domain of that name
        await ws.accept()
        await _fail(ws, e)
        return True
    if host is None:
        return False
    await relay(ws, node, host, ref)
    return True
