"""What a token over TCP may not do beyond its scopes (an audit of issue 10's §2): a
peer's replica exports, the cluster forward, container privileges, lists of other
domains' names, the WebSocket refusal. The app and fakes of tests/unit/test_scopes.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.unit.test_scopes import Host, fake_app, host, refused
from xenia.api.scopes import make_access_factory
from xenia.peers.audit import AuditLog
from xenia.peers.auth import TokenAuth
from xenia.peers.scopes import Grant
from xenia.storage.manager import StorageManager
from xenia.storage.replicas import ReplicaExports

__all__ = ["host"]  # the fixture, used by name


@pytest.fixture
def exports(host: Host, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A real ReplicaExports over a real default pool; QSD starts recorded, not run."""
    sm = StorageManager(host.m.paths, host.m.store)
    asyncio.run(sm.start())
    ex = ReplicaExports(host.m.paths, host.m.store, sm)
    engine = host.local.app.state.engine  # type: ignore[attr-defined]
    engine.replica_exports, engine.storage = ex, sm
    started: list[str] = []

    def launch(self: ReplicaExports, k: str, rec: dict[str, Any], doing: str) -> int:
        started.append(k)
        return 10809

    monkeypatch.setattr(ReplicaExports, "_launch", launch)
    host.m.storage = sm  # type: ignore[assignment]
    return started


def serve(host: Host, h: dict[str, str], volume: str, size: int = 1 << 20) -> Any:
    return host.tcp.post("/v1/replicas", headers=h, json={
        "pool": "default", "volume": volume, "size": size, "format": "raw",
        "listen_host": "127.0.0.1", "identity": "i", "key": "k" * 32})


def test_a_peer_serves_and_ends_only_its_own_replicas(host: Host, exports: list[str]) -> None:
    sm: StorageManager = host.m.storage  # type: ignore[assignment]
    sm.create_volume("default", "mine-not", "1M", "raw")  # some domain's, or nobody's
    a = host.token(name="peer-a")  # a peer's default: migrate
    b = host.token(name="peer-b")
    r = serve(host, a, "mine-not")
    assert r.status_code == 409 and "not a copy token 'peer-a' keeps" in r.json()["message"]
    assert exports == []  # no QSD for a volume it did not make
    # A new copy is the peer's; it may serve it again (a resync), another may not.
    assert serve(host, a, "copy").status_code == 201, exports
    assert serve(host, a, "copy").status_code == 201
    assert serve(host, b, "copy").status_code == 409
    assert exports == ["default.copy", "default.copy"]
    refused(host.tcp.delete("/v1/replicas/default/copy", headers=b),
            "token 'peer-b' did not make that export")
    assert [e["volume"] for e in host.local.get("/v1/replicas").json()] == ["copy"]
    assert [e["owner"] for e in host.tcp.get("/v1/replicas", headers=a).json()] == ["peer-a"]
    assert host.tcp.get("/v1/replicas", headers=b).json() == []  # not another peer's
    assert host.tcp.delete("/v1/replicas/default/copy", headers=a).status_code == 200
    assert host.local.get("/v1/replicas").json() == []
    # Not bigger than the pool's free space.
    r = serve(host, a, "huge", size=1 << 60)
    assert r.status_code == 400 and "do not fit in pool 'default'" in r.json()["message"]
    assert [v.name for v in sm.list_volumes("default")] == ["copy", "mine-not"]
    # An admin token may end anyone's export.
    assert serve(host, b, "other").status_code == 201
    assert host.tcp.delete("/v1/replicas/default/other",
                           headers=host.token("admin")).status_code == 200


# -- the cluster forward -------------------------------------------------------------------
class FakeNode:
    """A cluster member whose only other member is h1 (credential "cred-h1")."""

    is_member = True
    name = "h0"
    publisher = None
    members = {"h1": {"api": "192.0.2.2:8443"}}

    def client(self) -> Any:
        return self

    def verify(self, token: str) -> Grant | None:
        return Grant("member:h1", frozenset({"cluster"})) if token == "cred-h1" else None


@pytest.fixture
def member(tmp_path: Path) -> Iterator[Host]:
    """test_scopes.py's host, a cluster member: its TCP door knows h1's credential."""
    app, m, paths, store, tokens = fake_app(tmp_path)
    app.state.cluster = FakeNode()
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    audit = AuditLog(paths.audit_log)

    def verify(token: str) -> Grant | None:
        return tokens.verify(token) or app.state.cluster.verify(token)

    guarded = TokenAuth(app, verify, make_access_factory(app, [allowed]), audit)
    with TestClient(guarded) as tcp, TestClient(app) as local:  # type: ignore[arg-type]
        yield Host(tcp, local, m, tokens, allowed, tmp_path, paths.audit_log)
    audit.close()
    store.close()


def test_only_members_forward_and_never_as_root(member: Host) -> None:
    h1 = {"Authorization": "Bearer cred-h1"}

    def fwd(h: dict[str, str], method: str, path: str, body: Any = None) -> Any:
        return member.tcp.post("/v1/cluster/forward", headers=h,
                               json={"method": method, "path": path, "body": body})

    # A join token (a host token with the cluster scope), unused, and any other.
    join = member.token("cluster", name="cluster-join-0123abcd")
    other = member.token("cluster", "admin", name="ops")
    for h, name in ((join, "cluster-join-0123abcd"), (other, "ops")):
        refused(fwd(h, "POST", "/v1/domains/web-1/shutdown", {}),
                "only a cluster member's own credential", f"token '{name}'")
    assert member.m.calls == []
    # A member forwards domain verbs ...
    r = fwd(h1, "POST", "/v1/domains/web-1/shutdown", {})
    assert r.json() == {"status": 200, "body": {}} and member.m.calls == [("shutdown", "web-1")]
    # ... but nothing only admin (root) may do: the monitor, QEMU arguments, host USB,
    # and paths outside the pools and allowed directories.
    for path, body, words in (
            ("/v1/domains/web-1/monitor", {"command": "info"}, "lacks the scope 'admin'"),
            ("/v1/domains", {"config": {"name": "x", "device_model_args": ["-s"]}},
             "device_model_args"),
            ("/v1/domains", {"config": {"name": "x", "usbdev": [{"type": "hostdev"}]}},
             "host USB device"),
            ("/v1/domains", {"config": {"name": "x", "kernel": "/etc/shadow"}},
             "the kernel '/etc/shadow'")):
        ans = fwd(h1, "POST", path, body).json()
        assert ans["status"] == 403 and words in ans["body"]["message"], ans
    assert member.m.calls == [("shutdown", "web-1")]
    # The audit log names the request run and its domain.
    line = member.audit_lines()[2]
    assert (line["token"], line["route"], line["domain"]) == ("member:h1",
                                                              "/v1/cluster/forward", "web-1")
    assert line["forwarded"] == {"method": "POST", "route": "/v1/domains/{ref}/shutdown",
                                 "status": 200}


# -- names of domains outside a token's patterns -------------------------------------------
def test_ha_view_and_volume_users_show_only_the_tokens_domains(host: Host,
                                                               exports: list[str]) -> None:
    agent = SimpleNamespace(status=lambda: {
        "host": "h0", "restarts": [{"domain": "web-1"}, {"domain": "db-1"}],
        "decisions": [{"domain": "db-1", "to": "h0"}],
        "fences": [{"reason": "lease lost", "domains": ["db-1", "web-2"]}]})
    host.local.app.state.ha = agent  # type: ignore[attr-defined]
    web = host.token("read", domains=("web-*",))
    st = host.tcp.get("/v1/ha", headers=web).json()
    assert st["restarts"] == [{"domain": "web-1"}] and st["decisions"] == []
    assert st["fences"] == [{"reason": "lease lost", "domains": ["web-2"]}]
    assert len(host.tcp.get("/v1/ha", headers=host.token("read")).json()["restarts"]) == 2
    sm: StorageManager = host.m.storage  # type: ignore[assignment]
    sm.create_volume("default", "a", "1M", "raw")
    sm.create_volume("default", "b", "1M", "raw")
    sm.set_in_use_check(lambda path: "db-1" if path.endswith("/a.raw") else "web-1")
    rows = host.tcp.get("/v1/pools/default/volumes", headers=web).json()
    assert [(v["name"], v["used_by"]) for v in rows] == [("a", "(hidden)"), ("b", "web-1")]
    assert host.tcp.get("/v1/pools/default/volumes/a", headers=web).json()["used_by"] \
        == "(hidden)"
    assert host.local.get("/v1/pools/default/volumes/a").json()["used_by"] == "db-1"


def test_a_refused_websocket_names_the_scope_whatever_the_domains_name(host: Host) -> None:
    from starlette.websockets import WebSocketDisconnect

    long = "web-" + "x" * 60  # the longest name a domain may have
    read = host.token("read", name="reader-with-a-long-name")
    with pytest.raises(WebSocketDisconnect) as refused, host.tcp.websocket_connect(
            f"/v1/domains/{long}/console", headers=read):
        pass
    assert refused.value.code == 1008
    reason = refused.value.reason
    assert reason.startswith("needs the scope 'console' or 'cluster': ") and len(reason) <= 120
    assert "'console'" in reason
