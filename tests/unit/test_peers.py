"""Hosts as peers without a network: fingerprints, addresses, tokens, identity, PSK files,
the TCP auth middleware (through FastAPI's test client) and the `xenia host` output."""

from __future__ import annotations

import hashlib
import os
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from xenia.api.app import make_app
from xenia.api.scopes import make_access_factory
from xenia.cli.hosts import choose_fingerprint, format_list
from xenia.errors import KINDS, AlreadyExists, BackendError, InvalidConfig, NotFound
from xenia.paths import Paths
from xenia.peers import fingerprint as fp
from xenia.peers.address import ListenSpec, parse_listen, split_hostport
from xenia.peers.auth import TokenAuth, bearer_token
from xenia.peers.identity import ensure_identity, tls_dir
from xenia.peers.psk import make_psk, remove_psk_dir, write_psk_dir
from xenia.peers.tokens import KIND as TOKEN_KIND
from xenia.peers.tokens import TokenRegistry, hash_token
from xenia.store.sqlite import SqliteStore

FP = ":".join(["AB"] * 32)


# -- fingerprints ------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    FP, FP.lower(), FP.replace(":", ""), "SHA256:" + FP, "sha256 Fingerprint=" + FP,
    "  " + FP.replace(":", " ") + "\n",
])
def test_fingerprint_spellings(text: str) -> None:
    assert fp.normalize(text) == FP


@pytest.mark.parametrize("text", ["", "AB:CD", "zz" * 32, "ab" * 33, "SHA256:" + "ab" * 31])
def test_fingerprint_invalid(text: str) -> None:
    with pytest.raises(InvalidConfig, match="64 hex digits"):
        fp.normalize(text)


def test_fingerprint_of_der_and_matches() -> None:
    der = b"not really a certificate"
    digest = hashlib.sha256(der).hexdigest()
    assert fp.of_der(der) == ":".join(digest[i:i + 2] for i in range(0, 64, 2)).upper()
    assert fp.matches(digest, der)
    assert fp.matches(fp.of_der(der).lower(), der)
    assert not fp.matches(FP, der)
    assert not fp.matches(fp.of_der(der + b"x"), der)


# -- addresses and --listen --------------------------------------------------------------
@pytest.mark.parametrize("text,want", [
    ("10.0.0.2:8443", ("10.0.0.2", 8443)),
    ("10.0.0.2", ("10.0.0.2", 8443)),
    ("host-b.example:9000", ("host-b.example", 9000)),
    ("[fd00::2]:8443", ("fd00::2", 8443)),
    ("[::]", ("::", 8443)),
    (":8443", ("", 8443)),
])
def test_split_hostport(text: str, want: tuple[str, int]) -> None:
    assert split_hostport(text) == want


@pytest.mark.parametrize("text,problem", [
    ("fd00::2:8443", "needs brackets"), ("[fd00::2:8443", "unbalanced"),
    ("h:0", "not 1-65535"), ("h:65536", "not 1-65535"), ("h:x", "not 1-65535"),
    ("", "empty"),
])
def test_split_hostport_errors(text: str, problem: str) -> None:
    with pytest.raises(InvalidConfig, match=problem):
        split_hostport(text)


def test_parse_listen() -> None:
    assert parse_listen(None) is None
    assert parse_listen("off") is None
    assert parse_listen("") is None
    spec = parse_listen("10.231.0.2:8443")
    assert spec == ListenSpec("10.231.0.2", 8443, tls=True) and str(spec) == "10.231.0.2:8443"
    assert str(parse_listen(":9000")) == "0.0.0.0:9000"
    assert str(parse_listen("[::]:9000")) == "[::]:9000"
    assert parse_listen("127.0.0.1:9000", insecure_no_tls=True) == ListenSpec(
        "127.0.0.1", 9000, tls=False)
    with pytest.raises(InvalidConfig, match="--insecure-no-tls is given without --listen"):
        parse_listen(None, insecure_no_tls=True)


def test_daemon_listen_options(monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from xenia.peers.listener import add_arguments, listen_from_args

    def parse(*argv: str) -> ListenSpec | None:
        p = argparse.ArgumentParser()
        add_arguments(p)
        return listen_from_args(p, p.parse_args(argv))

    monkeypatch.delenv("XENIA_LISTEN", raising=False)
    assert parse() is None
    assert parse("--listen", "10.0.0.1:8443") == ListenSpec("10.0.0.1", 8443)
    monkeypatch.setenv("XENIA_LISTEN", "10.0.0.3:7000")
    assert parse() == ListenSpec("10.0.0.3", 7000)
    assert parse("--listen", "off") is None  # the flag wins over the environment
    assert parse("--insecure-no-tls") == ListenSpec("10.0.0.3", 7000, tls=False)
    with pytest.raises(SystemExit):
        parse("--listen", "fd00::1:80")
    assert "needs brackets" in capsys.readouterr().err


# -- tokens ------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "x.db")
    yield s
    s.close()


def test_tokens_only_hash_kept(store: SqliteStore) -> None:
    reg = TokenRegistry(store)
    rec, token = reg.create("b")
    assert token.startswith("xenia_") and len(token) > 40
    assert rec["name"] == "b" and "sha256" not in rec
    stored = store.obj_get(TOKEN_KIND, "b")
    assert stored is not None and stored["sha256"] == hash_token(token)
    assert token not in repr(stored)
    assert reg.list() == [{"name": "b", "created": stored["created"], "scopes": ["migrate"],
                           "domains": [], "legacy": False, "parent": None}]


def test_tokens_verify_and_revoke(store: SqliteStore) -> None:
    reg = TokenRegistry(store)
    _, t1 = reg.create("one")
    _, t2 = reg.create()
    g1 = reg.verify(t1)
    assert g1 is not None and g1.token == "one"
    g2 = reg.verify(t2)
    assert g2 is not None and g2.token.startswith("token-")
    assert reg.verify(t1 + "x") is None
    assert reg.verify("") is None
    assert reg.verify(hash_token(t1)) is None  # the stored hash is no credential
    reg.revoke("one")
    assert reg.verify(t1) is None and reg.verify(t2) == g2
    with pytest.raises(NotFound, match="Failed to revoke token 'one'"):
        reg.revoke("one")


def test_tokens_names(store: SqliteStore) -> None:
    reg = TokenRegistry(store)
    reg.create("dup")
    with pytest.raises(AlreadyExists, match="revoke it first"):
        reg.create("dup")
    for bad in ("-x", "a/b", "x" * 65, "a b"):
        with pytest.raises(InvalidConfig, match="Failed to name the token"):
            reg.create(bad)


def test_tokens_compare_every_record(store: SqliteStore, monkeypatch: pytest.MonkeyPatch
                                     ) -> None:
    """verify() goes through hmac.compare_digest for every record, match or not."""
    import xenia.peers.tokens as tokens_mod

    reg = TokenRegistry(store)
    _, first = reg.create("a")
    for n in "bcd":
        reg.create(n)
    calls: list[tuple[str, str]] = []
    real = tokens_mod.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tokens_mod.hmac, "compare_digest", spy)
    assert (reg.verify(first) or SimpleNamespace(token=None)).token == "a"
    assert len(calls) == 4


# -- errors ------------------------------------------------------------------------------
def test_error_kinds() -> None:
    assert KINDS["unauthorized"].http_status == 401
    assert KINDS["permission-denied"].http_status == 403
    assert KINDS["not-found"] is NotFound  # the others are still there


# -- identity ----------------------------------------------------------------------------
def paths_in(tmp_path: Path) -> Paths:
    p = Paths(state=tmp_path / "state", run=tmp_path / "run")
    p.ensure()
    return p


def test_identity_made_once(tmp_path: Path) -> None:
    paths = paths_in(tmp_path)
    ident = ensure_identity(paths, ["10.231.0.2"])
    d = tls_dir(paths)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(ident.key_path).st_mode) == 0o600
    assert ident.key_path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    der = ssl.PEM_cert_to_DER_cert(ident.cert_path.read_text())
    assert ident.fingerprint == fp.of_der(der)
    info = ident.describe()
    import socket

    assert info["subject"] == socket.gethostname()
    assert {"10.231.0.2", "127.0.0.1", "::1", "localhost", socket.gethostname()} <= set(
        info["sans"])
    # A second start loads it: peers have pinned it.
    again = ensure_identity(paths, ["10.9.9.9"])
    assert again.fingerprint == ident.fingerprint
    ident.ssl_server_context()  # key and certificate belong together


def test_identity_key_lost(tmp_path: Path) -> None:
    paths = paths_in(tmp_path)
    ident = ensure_identity(paths)
    ident.key_path.unlink()
    with pytest.raises(BackendError, match="host.key is missing"):
        ensure_identity(paths)


def test_identity_half_made_is_redone(tmp_path: Path) -> None:
    """A crash between key and certificate leaves a key only: the next start makes both."""
    paths = paths_in(tmp_path)
    first = ensure_identity(paths)
    first.cert_path.unlink()
    second = ensure_identity(paths)
    assert second.fingerprint != first.fingerprint and second.cert_path.exists()


# -- PSK for QEMU's tls-creds-psk --------------------------------------------------------
def test_make_psk() -> None:
    ident, key = make_psk()
    assert ident.startswith("xenia-mig-") and ":" not in ident
    assert len(key) == 64 and int(key, 16) >= 0
    assert make_psk() != make_psk()


def test_write_psk_dir(tmp_path: Path) -> None:
    ident, key = make_psk()
    d = write_psk_dir(tmp_path / "mig" / "tls", ident, key.upper())
    f = d / "keys.psk"
    assert f.read_text() == f"{ident}:{key}\n"
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    ident2, key2 = make_psk()
    write_psk_dir(d, ident2, key2)  # one directory, one migration: replaced
    assert f.read_text() == f"{ident2}:{key2}\n"
    assert sorted(p.name for p in d.iterdir()) == ["keys.psk"]
    remove_psk_dir(d)
    assert not d.exists()


@pytest.mark.parametrize("ident,key,problem", [
    ("a:b", "00" * 32, "identity"), ("", "00" * 32, "identity"),
    ("id", "xyz", "16-64 bytes"), ("id", "00" * 8, "16-64 bytes"), ("id", "0" * 63, "16-64"),
])
def test_write_psk_dir_refuses(tmp_path: Path, ident: str, key: str, problem: str) -> None:
    with pytest.raises(InvalidConfig, match=problem):
        write_psk_dir(tmp_path / "d", ident, key)


# -- the TCP middleware ------------------------------------------------------------------
def test_bearer_token() -> None:
    def scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
        return {"headers": list(headers)}

    assert bearer_token(scope()) is None
    assert bearer_token(scope((b"authorization", b"Bearer abc"))) == "abc"
    assert bearer_token(scope((b"Authorization", b"bearer  abc "))) == "abc"
    assert bearer_token(scope((b"authorization", b"Basic YTpi"))) is None
    assert bearer_token(scope((b"authorization", b"Bearer "))) is None


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[tuple[TestClient, TestClient, TokenRegistry]]:
    """(the TCP side: app behind TokenAuth, the UNIX side: the bare app, tokens)."""
    paths = paths_in(tmp_path)
    st = SqliteStore(paths.db)
    views = SimpleNamespace(host_info=lambda: {"host": "b"})
    app = make_app(SimpleNamespace(paths=paths, store=st, views=views))  # type: ignore[arg-type]
    tokens = TokenRegistry(st)
    guarded = TokenAuth(app, tokens.verify, make_access_factory(app, []))
    with TestClient(guarded) as tcp, TestClient(app) as local:  # type: ignore[arg-type]
        yield tcp, local, tokens
    st.close()


def test_tcp_needs_a_token(apps: tuple[TestClient, TestClient, TokenRegistry]) -> None:
    tcp, _, tokens = apps
    r = tcp.get("/v1/host")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"] == "unauthorized"
    assert r.json()["message"].startswith("Failed to authenticate the request: it carries no")
    r = tcp.get("/v1/host", headers={"Authorization": "Bearer xenia_wrong"})
    assert r.status_code == 401 and "not valid on this host" in r.json()["message"]
    r = tcp.get("/v1/no-such-route")
    assert r.status_code == 401  # before routing: nothing about the API leaks
    _, token = tokens.create("peer", ["read"])
    ok = {"Authorization": f"Bearer {token}"}
    r = tcp.get("/v1/host", headers=ok)
    assert r.status_code == 200 and r.json() == {"host": "b"}
    r = tcp.get("/v1/host/identity", headers=ok)
    assert r.status_code == 200 and len(r.json()["fingerprint"]) == 95
    tokens.revoke("peer")
    assert tcp.get("/v1/host", headers=ok).status_code == 401


def test_tcp_manages_tokens_only_with_admin(
        apps: tuple[TestClient, TestClient, TokenRegistry]) -> None:
    tcp, _, tokens = apps
    _, token = tokens.create("peer")
    ok = {"Authorization": f"Bearer {token}"}
    for method, url in (("GET", "/v1/host/tokens"), ("POST", "/v1/host/tokens"),
                        ("DELETE", "/v1/host/tokens/peer"), ("GET", "/v1/peers"),
                        ("POST", "/v1/peers"), ("DELETE", "/v1/peers/x")):
        r = tcp.request(method, url, headers=ok, json={})
        assert r.status_code == 403, (method, url)
        assert r.json()["error"] == "permission-denied"
        assert "lacks the scope 'admin'" in r.json()["message"]
    assert [t["name"] for t in tokens.list()] == ["peer"]
    _, admin = tokens.create("admin", ["admin"])
    r = tcp.get("/v1/host/tokens", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200 and {t["name"] for t in r.json()} == {"peer", "admin"}


def test_local_socket_manages_tokens(apps: tuple[TestClient, TestClient, TokenRegistry]
                                     ) -> None:
    tcp, local, _ = apps
    r = local.post("/v1/host/tokens", json={"name": "b"})
    assert r.status_code == 201
    token = r.json()["token"]
    assert local.get("/v1/host/tokens").json()[0]["name"] == "b"
    assert "token" not in local.get("/v1/host/tokens").json()[0]
    assert tcp.get("/v1/host", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert local.delete("/v1/host/tokens/b").status_code == 200
    r = local.delete("/v1/host/tokens/b")
    assert r.status_code == 404 and r.json()["error"] == "not-found"
    assert local.get("/v1/peers").json() == []
    assert local.get("/v1/host/certificate").json()["pem"].startswith("-----BEGIN CERT")
    r = local.post("/v1/peers", json={"name": "b", "address": "10.0.0.2", "token": "t"})
    assert r.status_code == 400 and "no fingerprint to pin" in r.json()["message"]
    r = local.post("/v1/peers", json={"name": "../x", "address": "10.0.0.2", "token": "t",
                                      "fingerprint": FP})
    assert r.status_code == 400 and "Failed to name the host" in r.json()["message"]


# -- CLI output --------------------------------------------------------------------------
def test_host_list_table() -> None:
    rows = [
        {"name": "b", "address": "10.231.0.2:8443", "reachable": True, "authenticated": True,
         "qemu_version": "10.0.2", "accel": "tcg", "free_memory": 2000, "domains": 3},
        {"name": "c", "address": "10.231.0.6:8443", "reachable": True, "authenticated": False},
        {"name": "d", "address": "10.231.0.10:8443", "reachable": False,
         "authenticated": False},
    ]
    lines = format_list(rows)
    assert lines[0].split() == ["NAME", "ADDRESS", "REACHABLE", "AUTH", "QEMU", "ACCEL",
                                "FREE(MiB)", "DOMAINS"]
    assert lines[1].split() == ["b", "10.231.0.2:8443", "yes", "yes", "10.0.2", "tcg", "2000",
                                "3"]
    assert lines[2].split() == ["c", "10.231.0.6:8443", "yes", "no", "-", "-", "-", "-"]
    assert lines[3].split() == ["d", "10.231.0.10:8443", "no", "-", "-", "-", "-", "-"]


def test_choose_fingerprint() -> None:
    probe = {"address": "10.0.0.2:8443", "fingerprint": FP, "subject": "b", "sans": []}
    assert choose_fingerprint("b", probe, trust=True, interactive=False) == FP
    with pytest.raises(InvalidConfig, match="without a terminal.*--fingerprint FP.*--trust"):
        choose_fingerprint("b", probe, trust=False, interactive=False)
