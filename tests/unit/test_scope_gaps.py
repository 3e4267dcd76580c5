"""What a token over TCP may not do beyond its scopes (an audit of issue 10's §2): a
peer's replica exports, the cluster forward, container privileges, lists of other
domains' names, the WebSocket refusal. The app and fakes of tests/unit/test_scopes.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.unit.test_scopes import Host, host, refused
from xenia.storage.manager import StorageManager
from xenia.storage.replicas import ReplicaExports

__all__ = ["host"]  # the fixture, used by name


@pytest.fixture
def exports(host: Host, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A real ReplicaExports over a real default pool; QSD starts recorded, not run."""
    sm = StorageManager(host.m.paths, host.m.store)
    asyncio.run(sm.start())
    ex = ReplicaExports(host.m.paths, host.m.store, sm)
    host.local.app.state.engine.replica_exports = ex  # type: ignore[attr-defined]
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
