"""PeerClient and the TCP listener, in one process on 127.0.0.1: pinning, tokens, errors.

The listener is the real one (serve_peers: a second uvicorn server in the loop, TLS from the
host identity, TokenAuth); the multi-host version with namespaces is in
tests/integration/test_peers.py.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from xenia.api.app import make_app
from xenia.errors import (
    AlreadyExists,
    InvalidConfig,
    NotFound,
    Unauthorized,
    Unreachable,
)
from xenia.paths import Paths
from xenia.peers.address import ListenSpec
from xenia.peers.client import FingerprintMismatch, PeerClient, fetch_certificate
from xenia.peers.listener import serve_peers
from xenia.peers.registry import PeerRegistry
from xenia.peers.secrets import PeerTokenFiles
from xenia.peers.service import PeerService
from xenia.peers.tokens import TokenRegistry
from xenia.store.sqlite import SqliteStore

WRONG_FP = ":".join(["AB"] * 32)


def resolve(ref: str) -> Any:
    raise NotFound(f"Failed to find domain '{ref}': no such domain")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_with_peer(tmp_path: Path, body: Callable[[PeerService, str], Awaitable[None]],
                  tls: bool = True, manager: Any = None) -> None:
    """Serve a host "b" on 127.0.0.1 and run `body(its service, its address)`; its
    domains are `manager`'s (default: none)."""
    paths = Paths(state=tmp_path / "b" / "state", run=tmp_path / "b" / "run")
    paths.ensure()
    store = SqliteStore(paths.db)
    views = SimpleNamespace(host_info=lambda: {"host": "b", "qemu_version": "10.0.2",
                                               "accel": "tcg", "free_memory": 1234,
                                               "domains": 2}, describe=dict)
    app = make_app(SimpleNamespace(paths=paths, store=store,  # type: ignore[arg-type]
                                   manager=manager or SimpleNamespace(resolve=resolve),
                                   views=views))
    spec = ListenSpec("127.0.0.1", free_port(), tls=tls)

    async def main() -> None:
        async with serve_peers(app, paths, store, spec) as svc:
            await body(svc, str(spec))

    try:
        asyncio.run(main())
    finally:
        store.close()


def test_pinned_tls_and_token(tmp_path: Path) -> None:
    async def body(svc: PeerService, address: str) -> None:
        _, token = svc.tokens.create("a", ["read"])
        fingerprint = svc.identity().fingerprint
        pem, seen = await asyncio.to_thread(fetch_certificate, address)
        assert seen == fingerprint and pem.startswith("-----BEGIN CERTIFICATE-----")

        good = PeerClient(address, token, fingerprint.lower().replace(":", ""), name="b")
        host = await good.arequest("GET", "/v1/host")
        assert host["qemu_version"] == "10.0.2" and host["domains"] == 2
        with pytest.raises(NotFound, match=r"Failed to find domain .*\(answer of host 'b' at "):
            await good.arequest("GET", "/v1/domains/nope")

        bad_token = PeerClient(address, "xenia_nope", fingerprint, name="b")
        with pytest.raises(Unauthorized, match="token is not valid on this host"):
            await bad_token.arequest("GET", "/v1/host")

        svc.tokens.revoke("a")
        with pytest.raises(Unauthorized):
            await good.arequest("GET", "/v1/host")

    run_with_peer(tmp_path, body)


def test_wrong_pin_sends_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = TokenRegistry.verify

    def spy(self: TokenRegistry, token: str) -> str | None:
        seen.append(token)
        return real(self, token)

    monkeypatch.setattr(TokenRegistry, "verify", spy)

    async def body(svc: PeerService, address: str) -> None:
        _, token = svc.tokens.create("a")
        client = PeerClient(address, token, WRONG_FP, name="b")
        with pytest.raises(FingerprintMismatch) as info:
            await client.arequest("GET", "/v1/host")
        msg = info.value.message
        assert "man-in-the-middle" in msg and svc.identity().fingerprint in msg
        assert "xenia host remove b" in msg and "--fingerprint NEW" in msg
        assert info.value.kind == "unauthorized"
        assert seen == []  # the token never left this side
        await PeerClient(address, token, svc.identity().fingerprint).arequest("GET", "/v1/host")
        assert seen == [token]

    run_with_peer(tmp_path, body)


def test_plain_http_to_tls_listener_refused(tmp_path: Path) -> None:
    async def body(svc: PeerService, address: str) -> None:
        _, token = svc.tokens.create("a")
        host, port = address.split(":")

        def plain() -> Any:
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
            try:
                conn.request("GET", "/v1/host", headers={"Authorization": f"Bearer {token}"})
                return conn.getresponse().status
            finally:
                conn.close()

        with pytest.raises((http.client.HTTPException, OSError)):
            await asyncio.to_thread(plain)
        insecure = PeerClient(address, token, None, name="b", tls=False)
        with pytest.raises(Unreachable, match="Failed to reach host 'b' at 127.0.0.1:.*closed"):
            await insecure.arequest("GET", "/v1/host")

    run_with_peer(tmp_path, body)


def test_insecure_listener(tmp_path: Path) -> None:
    async def body(svc: PeerService, address: str) -> None:
        _, token = svc.tokens.create("a")
        client = PeerClient(address, token, None, name="b", tls=False)
        assert (await client.arequest("GET", "/v1/host"))["host"] == "b"
        with pytest.raises(Unauthorized):
            await PeerClient(address, "x", None, tls=False).arequest("GET", "/v1/host")
        tls = PeerClient(address, token, WRONG_FP, name="b")
        with pytest.raises(Unreachable, match="TLS handshake failed"):
            await tls.arequest("GET", "/v1/host")

    run_with_peer(tmp_path, body, tls=False)


def test_unreachable_messages() -> None:
    port = free_port()
    c = PeerClient(f"127.0.0.1:{port}", "t", WRONG_FP, name="b", timeout=2)
    with pytest.raises(Unreachable) as info:
        c.request("GET", "/v1/host")
    assert info.value.message.startswith(
        f"Failed to reach host 'b' at 127.0.0.1:{port}: connection refused")

    # A listener that accepts and then says nothing: the timeout, named.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        c = PeerClient(f"127.0.0.1:{srv.getsockname()[1]}", "t", WRONG_FP, name="b")
        with pytest.raises(Unreachable, match=r"no answer within 0\.5 s"):
            c.request("GET", "/v1/host", timeout=0.5)
    finally:
        srv.close()


def test_client_needs_a_pin() -> None:
    with pytest.raises(InvalidConfig, match="no certificate fingerprint to pin"):
        PeerClient("10.0.0.2:8443", "t", None)
    with pytest.raises(InvalidConfig, match="64 hex digits"):
        PeerClient("10.0.0.2:8443", "t", "abc")


def test_registry_add_list_remove(tmp_path: Path) -> None:
    store_a = SqliteStore(tmp_path / "a.db")
    files = PeerTokenFiles(tmp_path / "a-tokens")
    reg = PeerRegistry(store_a, files)

    async def body(svc: PeerService, address: str) -> None:
        _, token = svc.tokens.create("for-a")
        fingerprint = svc.identity().fingerprint
        probe = await reg.probe(address)
        assert probe["fingerprint"] == fingerprint and "127.0.0.1" in probe["sans"]

        with pytest.raises(Unauthorized, match="Failed to add host 'b': it refused the token"):
            await reg.add("b", address, "xenia_bad", fingerprint)
        with pytest.raises(FingerprintMismatch):
            await reg.add("b", address, token, WRONG_FP)
        assert reg.list() == []  # nothing stored for a peer that does not authenticate

        added = await reg.add("b", address, token, fingerprint)
        assert added["fingerprint"] == fingerprint and added["free_memory"] == 1234
        assert "token" not in added
        # The token is in a root-only file, not in the database.
        assert "token" not in store_a.obj_get("peer", "b")  # type: ignore[operator]
        assert files.read("b") == token
        assert (tmp_path / "a-tokens" / "b").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "a-tokens").stat().st_mode & 0o777 == 0o700
        with pytest.raises(AlreadyExists, match="xenia host remove b"):
            await reg.add("b", address, token, fingerprint)

        (row,) = await reg.status_all()
        assert row["reachable"] and row["authenticated"] and row["domains"] == 2
        # PeerClient.from_store: what the migration code uses.
        from_store = PeerClient.from_store(store_a, "b", files)
        assert (await from_store.arequest("GET", "/v1/host"))["host"] == "b"

        svc.tokens.revoke("for-a")
        (row,) = await reg.status_all()
        assert row["reachable"] and not row["authenticated"]
        assert "token is not valid" in row["error"]

        reg.remove("b")
        assert reg.list() == [] and not (tmp_path / "a-tokens" / "b").exists()
        with pytest.raises(NotFound, match="Failed to find host 'b'"):
            reg.remove("b")

    try:
        run_with_peer(tmp_path, body)
        # The peer is gone now: unreachable, not unauthenticated.
        store_a.obj_put("peer", "gone", {"name": "gone", "address": f"127.0.0.1:{free_port()}",
                                         "token": "t", "fingerprint": WRONG_FP, "tls": True})
        (row,) = asyncio.run(reg.status_all())
        assert not row["reachable"] and not row["authenticated"]
        assert "connection refused" in row["error"]
    finally:
        store_a.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_server_context_refuses_old_tls(tmp_path: Path) -> None:
    async def body(svc: PeerService, address: str) -> None:
        host, port = address.split(":")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        try:
            ctx.minimum_version = ssl.TLSVersion.TLSv1
        except ValueError:
            pytest.skip("this OpenSSL cannot even offer TLS 1.1")

        def handshake() -> None:
            with socket.create_connection((host, int(port)), timeout=5) as raw, \
                    ctx.wrap_socket(raw):
                pass

        with pytest.raises((ssl.SSLError, OSError)):
            await asyncio.to_thread(handshake)

    run_with_peer(tmp_path, body)
