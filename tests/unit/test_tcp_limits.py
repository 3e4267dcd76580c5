"""The TCP listener's uvicorn setup (peers/listener.py's _serving, peers/limits.py) on real
sockets, in-process: the global connection cap and the WebSocket message bound.

(tests/integration/test_listener_limits.py covers the per-client bound, header and body
deadlines and body size against a real xeniad.)"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from xenia.peers.address import ListenSpec
from xenia.peers.limits import Limits
from xenia.peers.listener import _serving

REQUEST = b"GET /ping HTTP/1.1\r\nhost: x\r\n\r\n"


def make_app() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    @app.websocket("/echo")
    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await ws.send_bytes(await ws.receive_bytes())

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """One keep-alive GET /ping; the status line (b"" if the server closed)."""
    writer.write(REQUEST)
    await writer.drain()
    line = await reader.readline()
    with contextlib.suppress(asyncio.IncompleteReadError):
        while (await reader.readuntil(b"\r\n")) != b"\r\n":
            pass
        await reader.readexactly(len(b'{"ok":true}'))
    return line


async def refused(source: str, port: int) -> bool:
    """True if a connection from `source` is closed without an answer."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=(source, 0))
        line = await asyncio.wait_for(ask(reader, writer), 5)
        writer.close()
    except (ConnectionError, OSError):
        return True
    return line == b""


@pytest.fixture(autouse=True)
def _default_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MAX_CONNECTIONS", "MAX_PER_CLIENT", "MAX_BODY"):
        monkeypatch.delenv(f"XENIA_TCP_{name}", raising=False)


def test_the_129th_connection_is_refused_while_the_unix_socket_answers(tmp_path: Path
                                                                        ) -> None:
    limits = Limits()
    # From five loopback addresses, so that the per-client bound (32) is not what trips.
    sources = [f"127.0.0.{2 + i // limits.per_client}" for i in range(limits.connections)]
    app = make_app()
    port = free_port()
    unix = uvicorn.Server(uvicorn.Config(app, uds=str(tmp_path / "api.sock"),
                                         log_level="warning", lifespan="off"))

    async def scenario() -> None:
        unix_task = asyncio.create_task(unix.serve())
        held = []
        try:
            async with _serving(app, ListenSpec("127.0.0.1", port, tls=False), None, "test"):
                # Each answered once: the server has counted it.
                for source in sources:
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", port, local_addr=(source, 0))
                    assert (await ask(reader, writer)).startswith(b"HTTP/1.1 200")
                    held.append(writer)
                assert await refused("127.0.0.7", port)
                # The UNIX socket, on the same event loop, answers meanwhile.
                while not unix.started:
                    await asyncio.sleep(0.01)
                start = time.monotonic()
                reader, writer = await asyncio.open_unix_connection(str(tmp_path / "api.sock"))
                assert (await ask(reader, writer)).startswith(b"HTTP/1.1 200")
                writer.close()
                assert time.monotonic() - start < 1.0
                # One closed: a new connection is served again (once the server saw it).
                held.pop().close()
                deadline = time.monotonic() + 5
                while await refused("127.0.0.7", port):
                    assert time.monotonic() < deadline, "no connection served after one closed"
                    await asyncio.sleep(0.05)
        finally:
            for writer in held:
                writer.close()
            unix.should_exit = True
            await unix_task

    asyncio.run(scenario())


def test_a_websocket_message_above_the_body_cap_closes_the_socket() -> None:
    app = make_app()
    port = free_port()
    limit = Limits().max_body

    async def scenario() -> None:
        async with _serving(app, ListenSpec("127.0.0.1", port, tls=False), None, "test"), \
                connect(f"ws://127.0.0.1:{port}/echo", max_size=None) as ws:
            await ws.send(b"a" * (limit // 2))
            assert await ws.recv() == b"a" * (limit // 2)
            # uvicorn's own default would take 16 MiB.
            await ws.send(b"b" * (limit + 1))
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009

    asyncio.run(scenario())
