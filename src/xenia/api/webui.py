"""Routes the web UI needs beyond the CLI's: the server's dry run of a pasted xl.cfg, the
serial console and the VNC screen over WebSockets (xterm.js and noVNC in the browser), the
graphs' history, the event log and the hosts a domain may migrate to.

All are ordinary API routes with entries in api/scopes.py, so a token (or the browser
session holding it) gets exactly the rights it has on every other route.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from pydantic import BaseModel

from xenia.api.deps import Manager
from xenia.api.peers import Peers
from xenia.api.relaying import until_first
from xenia.config.build import build_config
from xenia.config.xlcfg import parse_config
from xenia.errors import BackendError, InvalidConfig, NotSupported, XeniaError
from xenia.host.history import History
from xenia.hostos.peercred import check_stream

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1")

MAX_CONFIG = 64 * 1024  # an xl.cfg is a few hundred bytes; this bounds a paste


class ParseRequest(BaseModel):
    text: str
    source: str = "pasted.cfg"


class _Collect(logging.Handler):
    """The config warnings of one thread (parses of concurrent requests run in other
    worker threads, and the logger is shared)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def _warnings() -> Iterator[list[str]]:
    handler = _Collect()
    logger = logging.getLogger("xenia.config")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def dry_run(text: str, source: str) -> dict[str, Any]:
    """xl.cfg text -> {"config": the DomainConfig as the create takes it, "warnings"};
    InvalidConfig (with file:line:column) when it is wrong. Starts nothing."""
    if len(text) > MAX_CONFIG:
        raise InvalidConfig(f"Failed to read {source}: it is over {MAX_CONFIG} bytes; an "
                            "xl.cfg is a few hundred")
    with _warnings() as warnings:
        cfg = build_config(parse_config(text, source), source)
    return {"config": cfg.to_dict(), "warnings": list(warnings)}


def _history(request: Request) -> History:
    hist = getattr(request.app.state, "history", None)
    if hist is None:
        raise NotSupported("Failed to read the graphs: this xeniad does not sample them")
    return hist  # type: ignore[no-any-return]


@router.get("/domains/{ref}/history")
async def domain_history(ref: str, request: Request, m: Manager) -> dict[str, Any]:
    """The last hour of the domain's CPU, memory, network and disk (host/history.py)."""
    rec = m.resolve(ref)
    return {"name": rec.name, "interval": _history(request).interval,
            **_history(request).series(rec.uuid)}


@router.get("/host/history")
async def host_history(request: Request) -> dict[str, Any]:
    """The host's: CPU outside idle, memory in use, and its domains' traffic summed."""
    return {"interval": _history(request).interval,
            **_history(request).series(History.HOST)}


AUDIT_TAIL = 256 * 1024  # the event page shows the last few hundred entries


def audit_tail(path: Path, limit: int) -> list[dict[str, Any]]:
    """The last `limit` entries of the audit log, newest first (a torn last line, being
    written, is skipped)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - AUDIT_TAIL))
            lines = f.read().splitlines()[1 if size > AUDIT_TAIL else 0:]
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
        if len(out) >= limit:
            break
    return out


@router.get("/host/audit")
async def audit(request: Request, limit: int = 200) -> list[dict[str, Any]]:
    """The event log: who changed what over TCP, when, with what result (peers/audit.py)."""
    path = request.app.state.engine.paths.audit_log
    return await asyncio.to_thread(audit_tail, path, max(1, min(limit, 2000)))


@router.get("/host/targets")
async def migration_targets(request: Request, p: Peers) -> dict[str, Any]:
    """Where this host's domains may migrate to, for the domain page's picker: the other
    cluster members (when this host is one) and the peers added with `xenia host add`.
    Names only: a peer's address and token stay the admin's (GET /v1/peers)."""
    node = getattr(request.app.state, "cluster", None)
    members = ([n for n in sorted(node.members) if n != node.name]
               if node is not None and node.is_member else [])
    peers = sorted(str(r["name"]) for r in p.peers.list())
    return {"members": members, "peers": [n for n in peers if n not in members]}


@router.post("/config/parse")
async def parse(req: ParseRequest) -> dict[str, Any]:
    return await asyncio.to_thread(dry_run, req.text, req.source)


async def _running(m: Any, ref: str, what: str) -> tuple[Any, Any]:
    rec = m.resolve(ref)
    inst = m.instance_of(rec.uuid)
    if inst is None or not inst.alive:
        raise BackendError(f"Failed to open the {what} of '{rec.name}': it is not running; "
                           "start it first")
    return rec, inst


@router.websocket("/domains/{ref}/console")
async def console(ws: WebSocket, ref: str) -> None:
    """The domain's serial console (a container's pty) as binary WebSocket messages both
    ways. QEMU takes one console client at a time, as xl's console: while `xenia console`
    is attached, this waits for it. On the local socket of a cluster member, a domain of
    another member is relayed from there (cluster/console.py)."""
    from xenia.cluster.console import relay_if_remote

    if await relay_if_remote(ws, ref):  # a domain of another cluster member
        return
    m = ws.app.state.engine.manager  # (deps.Manager takes a Request, not a WebSocket)

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        _, inst = await _running(m, ref, "console")
        path = Path(inst.console_path())
        reader, writer = await asyncio.open_unix_connection(str(path))
        peer = inst.console_peer()
        if peer is not None:  # a QEMU's run dir is its own: the path may lead elsewhere
            check_stream(writer, peer, f"the console of '{ref}' at {path}")
        return reader, writer

    await relay(ws, connect)


@router.websocket("/domains/{ref}/vnc")
async def vnc(ws: WebSocket, ref: str) -> None:
    """The HVM domain's VNC server (QEMU's, on the host's loopback by default), relayed
    byte for byte for noVNC in the browser: RFB over the WebSocket, no websockify."""
    m = ws.app.state.engine.manager

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        rec, _ = await _running(m, ref, "screen")
        where = str(rec.runtime.get("vnc") or "")
        host, _, port = where.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidConfig(f"Failed to open the screen of '{rec.name}': it has no VNC "
                                "display (set vnc=1 in its config; HVM domains only)")
        return await asyncio.open_connection(host.strip("[]"), int(port))

    await relay(ws, connect)


async def relay(ws: WebSocket, connect: Callable[[], Awaitable[
        tuple[asyncio.StreamReader, asyncio.StreamWriter]]]) -> None:
    """Copy between the WebSocket and the stream `connect` opens until either side ends.
    A failure to connect closes the WebSocket (1011) with the reason, before accepting."""
    try:
        reader, writer = await asyncio.wait_for(connect(), 10)
    except (XeniaError, OSError, TimeoutError) as e:
        msg = e.message if isinstance(e, XeniaError) else f"Failed to connect: {e}"
        log.info("websocket %s refused: %s", ws.url.path, msg)
        await ws.close(code=1011, reason=msg[:120])
        return
    await ws.accept()

    async def to_browser() -> None:
        while data := await reader.read(65536):
            await ws.send_bytes(data)

    async def to_server() -> None:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes") or (msg.get("text") or "").encode()
            writer.write(data)
            await writer.drain()

    try:
        await until_first(to_browser(), to_server())
    except WebSocketDisconnect:
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await ws.close()

