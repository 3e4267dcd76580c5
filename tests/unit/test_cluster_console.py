"""The interactive console of another member's domain (cluster/console.py and
cli/remote_console.py): the member-to-member WebSocket over the real TLS listener (pinning,
the `cluster` scope, refusals) and the error paths of both relays."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket
from fastapi.testclient import TestClient
from websockets.sync.server import ServerConnection, unix_serve

from tests.unit.test_peers_client import WRONG_FP, free_port, run_with_peer
from xenia.api.scopes import RULES
from xenia.cli import remote_console
from xenia.cluster import console as relay_mod
from xenia.errors import BackendError, NotFound, Unreachable
from xenia.peers.client import FingerprintMismatch, PeerClient
from xenia.peers.service import PeerService


def echo_console(path: Path, answer: Callable[[bytes], bytes] = bytes) -> socket.socket:
    """A stand-in for QEMU's console socket: one client, whose bytes come back as
    `answer(bytes)` (the UI's tests upper-case them)."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(4096):
                conn.sendall(answer(data))

    threading.Thread(target=serve, daemon=True).start()
    return srv


def test_member_websocket_pinned_scoped_and_refused(tmp_path: Path) -> None:
    console = tmp_path / "console.sock"
    srv = echo_console(console)
    dom = SimpleNamespace(uuid="u1", name="g1")
    inst = SimpleNamespace(alive=True, console_path=lambda: str(console), console_peer=lambda: None)
    manager = SimpleNamespace(resolve=lambda ref: dom, instance_of=lambda uuid: inst)

    async def body(svc: PeerService, address: str) -> None:
        fingerprint = svc.identity().fingerprint
        _, member = svc.tokens.create("member", ["cluster"])
        # The cluster credential opens the console route; bytes go both ways.
        up = await relay_mod.open_upstream(PeerClient(address, member, fingerprint,
                                                      name="b"), "g1")
        await up.send(b"uname\n")
        assert await asyncio.wait_for(up.recv(), 5) == b"uname\n"
        await up.close()
        # Another certificate than the pinned one: refused before the credential goes.
        with pytest.raises(FingerprintMismatch, match="Nothing was sent"):
            await relay_mod.open_upstream(PeerClient(address, member, WRONG_FP, name="b"),
                                          "g1")
        # A credential without the console or cluster scope: the member refuses it.
        _, reader = svc.tokens.create("reader", ["read"])
        with pytest.raises(BackendError, match=r"member 'b' refused it \(HTTP 403\)"):
            await relay_mod.open_upstream(PeerClient(address, reader, fingerprint,
                                                     name="b"), "g1")
        # Nobody listening.
        gone = PeerClient(f"127.0.0.1:{free_port()}", member, fingerprint, name="c")
        with pytest.raises(Unreachable, match="cannot reach cluster member 'c'"):
            await relay_mod.open_upstream(gone, "g1")

    try:
        run_with_peer(tmp_path, body, manager=manager)
    finally:
        srv.close()


def relay_app(answer: dict[str, Any]) -> FastAPI:
    """A route that relays as xeniad's does, from a member whose forward route gives
    `answer` for the domain."""
    async def arequest(method: str, url: str, body: Any) -> dict[str, Any]:
        assert (method, url, body["path"]) == ("POST", "/v1/cluster/forward",
                                               "/v1/domains/g1")
        return answer

    node = SimpleNamespace(peer=lambda host, timeout: SimpleNamespace(arequest=arequest))
    app = FastAPI()

    @app.websocket("/c/{ref}")
    async def route(ws: WebSocket, ref: str) -> None:
        await relay_mod.relay(ws, node, "h1", ref)

    return app


@pytest.mark.parametrize(("answer", "kind", "words"), [
    ({"status": 404, "body": {"error": "not-found", "message": "Failed to find domain 'g1'"}},
     "not-found", "(on cluster member 'h1')"),
    ({"status": 200, "body": {"name": "g1", "console": None}},
     "backend", "it is not running on cluster member 'h1'"),
])
def test_relay_reports_a_refusal_as_an_error_message(answer: dict[str, Any], kind: str,
                                                     words: str) -> None:
    with TestClient(relay_app(answer)) as client, client.websocket_connect("/c/g1") as ws:
        err = json.loads(ws.receive_text())
        assert err["error"] == kind and words in err["message"]
        assert ws.receive()["code"] == relay_mod.CLOSE_BROKEN


@pytest.fixture
def local_relay(tmp_path: Path) -> Iterator[tuple[Path, list[Any]]]:
    """A stand-in for xeniad's local socket; each connection runs the next handler."""
    path = tmp_path / "api.sock"
    handlers: list[Any] = []

    def handler(conn: ServerConnection) -> None:
        handlers.pop(0)(conn)

    with unix_serve(handler, str(path)) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield path, handlers
        server.shutdown()


def drain(sock: socket.socket) -> bytes:
    out = b""
    sock.settimeout(5)
    while data := sock.recv(4096):
        out += data
    return out


def test_cli_stream_raises_the_relays_error(local_relay: tuple[Path, list[Any]]) -> None:
    path, handlers = local_relay

    def refuse(conn: ServerConnection) -> None:
        conn.send(json.dumps({"error": "not-found", "message": "Failed to find domain 'g1'"}))
        conn.close(code=relay_mod.CLOSE_BROKEN)

    handlers.append(refuse)
    stream = remote_console.open_stream(path, "g1")
    assert drain(stream.sock) == b""  # the relay's end is the socket's end
    stream.sock.close()
    with pytest.raises(NotFound, match="Failed to find domain 'g1'"):
        stream.finish()
    # attach(): the error before any "Connected", and nothing resumed.
    handlers.append(refuse)
    resumed: list[bool] = []
    with pytest.raises(NotFound, match="Failed to find domain 'g1'"):
        remote_console.attach(path, "g1", connected=lambda: resumed.append(True))
    assert resumed == []


def test_cli_stream_broken_relay_is_an_error(local_relay: tuple[Path, list[Any]]) -> None:
    path, handlers = local_relay

    def broken(conn: ServerConnection) -> None:
        conn.send(b"boot\r\n")
        conn.socket.shutdown(socket.SHUT_RDWR)  # no close frame: the relay died

    handlers.append(broken)
    stream = remote_console.open_stream(path, "g1")
    assert drain(stream.sock) == b"boot\r\n"
    stream.sock.close()
    with pytest.raises(BackendError, match="the connection to xeniad broke"):
        stream.finish()


def test_cli_stream_detach_and_normal_end(local_relay: tuple[Path, list[Any]]) -> None:
    path, handlers = local_relay
    seen: list[bytes] = []
    closed = threading.Event()

    def echo_until_closed(conn: ServerConnection) -> None:
        for msg in conn:
            seen.append(msg if isinstance(msg, bytes) else b"text!")
            conn.send(b"ok")
        closed.set()

    handlers.append(echo_until_closed)
    stream = remote_console.open_stream(path, "g1")
    stream.sock.sendall(b"ls\r")
    stream.sock.settimeout(5)
    assert stream.sock.recv(10) == b"ok"
    stream.sock.close()  # the detach: attach_socket() closes its end
    stream.finish()  # no error
    assert closed.wait(5) and seen == [b"ls\r"]

    def hang_up(conn: ServerConnection) -> None:
        conn.send(b"")  # the relay's "connected": not console data
        conn.send(b"bye")
        conn.close()  # the guest went away: a normal close

    handlers.append(hang_up)
    stream = remote_console.open_stream(path, "g1")
    stream.wait_ready()
    assert drain(stream.sock) == b"bye"
    stream.sock.close()
    stream.finish()


def test_cli_refused_upgrade_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="cannot open the relay"):
        remote_console.open_stream(tmp_path / "none.sock", "g1")


def test_the_cluster_scope_opens_the_console_only() -> None:
    d = "/v1/domains/{ref}"
    assert RULES[("WEBSOCKET", d + "/console")].scopes == ("console", "cluster")
    # Not the screen, nor the console's other routes (those are forwarded verbs).
    assert RULES[("WEBSOCKET", d + "/vnc")].scopes == ("console",)
    assert RULES[("POST", d + "/console/run")].scopes == ("console",)


@pytest.mark.parametrize("broken", [True, False])
def test_relay_ends_with_the_member(local_relay: tuple[Path, list[Any]],
                                    monkeypatch: pytest.MonkeyPatch, broken: bool) -> None:
    """The member's side ending ends the local client's: a normal close as a close, a
    broken connection as an error message and close code 1011."""
    from websockets.asyncio.client import unix_connect

    path, handlers = local_relay

    def member(conn: ServerConnection) -> None:
        conn.send(b"boot\r\n")
        if broken:
            conn.socket.shutdown(socket.SHUT_RDWR)
        else:
            conn.close()

    handlers.append(member)

    async def upstream(peer: Any, ref: str) -> Any:
        return await unix_connect(str(path), "ws://member/console")

    monkeypatch.setattr(relay_mod, "open_upstream", upstream)
    app = relay_app({"status": 200, "body": {"name": "g1", "console": "/run/c.sock"}})
    with TestClient(app) as client, client.websocket_connect("/c/g1") as ws:
        assert ws.receive_bytes() == b""  # "connected"
        assert ws.receive_bytes() == b"boot\r\n"
        if broken:
            err = json.loads(ws.receive_text())
            assert err["error"] == "backend" and "cluster member 'h1' broke" in err["message"]
            assert ws.receive()["code"] == relay_mod.CLOSE_BROKEN
        else:
            assert ws.receive()["code"] == 1000
