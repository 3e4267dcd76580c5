"""ClusterForward (api/forward.py): which requests go to another member, and the refusals.

The node and its etcd are fakes here (error paths and routing decisions only); the
integration test (tests/integration/test_cluster.py) forwards between real xeniads.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from xenia.api.app import make_app
from xenia.errors import NotFound


class FakePeer:
    def __init__(self, node: FakeNode, host: str) -> None:
        self.node, self.host = node, host

    async def arequest(self, method: str, url: str, json: Any = None,
                       timeout: float | None = None) -> Any:
        self.node.sent.append((self.host, json))
        return {"status": 200, "body": {"ok": True}}


class FakeManager:
    def resolve(self, ref: str) -> Any:
        if ref == "here":
            return SimpleNamespace(name="here")
        raise NotFound(f"Failed to find domain '{ref}'")

    async def pause(self, ref: str) -> None:
        self.resolve(ref)


class FakeNode:
    is_member = True
    name = "h0"
    publisher = None

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.sent: list[tuple[str, Any]] = []
        self.jobs: dict[str, str] = {}
        self.engine = SimpleNamespace(manager=FakeManager(), sender=SimpleNamespace(jobs={}))

    def client(self) -> Any:
        return self

    def range(self, prefix: str, serializable: bool = False) -> Any:
        from xenia.cluster import keys
        from xenia.cluster.kv import KV

        return [KV(keys.view(r["host"], r["uuid"]), keys.encode(r), 1, 1, 1)
                for r in self.rows], 1

    def peer(self, host: str, timeout: float | None = None) -> FakePeer:
        return FakePeer(self, host)


U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"


@pytest.fixture
def app_node() -> tuple[TestClient, FakeNode]:
    node = FakeNode([{"name": "web", "uuid": U1, "host": "h1"},
                     {"name": "dup", "uuid": U1, "host": "h1"},
                     {"name": "dup", "uuid": U2, "host": "h2"}])
    engine = SimpleNamespace(manager=node.engine.manager, sender=node.engine.sender)
    app = make_app(engine)  # type: ignore[arg-type]
    app.state.cluster = node
    return TestClient(app), node


def test_a_remote_domain_goes_to_its_member(app_node: tuple[TestClient, FakeNode]) -> None:
    client, node = app_node
    res = client.post("/v1/domains/web/pause", json={})
    assert res.status_code == 200 and res.json() == {"ok": True, "host": "h1"}
    assert node.sent == [("h1", {"method": "POST", "path": "/v1/domains/web/pause",
                                 "body": {}})]


def test_start_goes_to_the_member_with_the_domain(app_node: tuple[TestClient, FakeNode]
                                                  ) -> None:
    client, node = app_node
    res = client.post("/v1/domains/web/start", json={})
    assert res.status_code == 200 and res.json()["host"] == "h1"
    assert node.sent == [("h1", {"method": "POST", "path": "/v1/domains/web/start",
                                 "body": {}})]


def test_a_local_domain_and_an_unknown_one_stay_here(app_node: tuple[TestClient, FakeNode]
                                                     ) -> None:
    client, node = app_node
    assert client.post("/v1/domains/here/pause", json={}).status_code == 200
    res = client.post("/v1/domains/nowhere/pause", json={})
    assert res.status_code == 404 and "nowhere" in res.json()["message"]
    assert node.sent == []


def test_a_name_on_two_members_is_refused(app_node: tuple[TestClient, FakeNode]) -> None:
    client, node = app_node
    res = client.post("/v1/domains/dup/pause", json={})
    assert res.status_code == 400
    assert "members h1, h2 each have one of that name; name it by its UUID" in \
        res.json()["message"]
    assert node.sent == []


def test_a_forwarded_request_is_not_forwarded_again(app_node: tuple[TestClient, FakeNode]
                                                    ) -> None:
    client, node = app_node
    res = client.post("/v1/domains/web/pause", json={}, headers={"x-xenia-forwarded": "1"})
    assert res.status_code == 404
    assert node.sent == []


def test_forward_route_refuses_host_changes(app_node: tuple[TestClient, FakeNode]) -> None:
    client, _ = app_node
    res = client.post("/v1/cluster/forward", json={"method": "POST", "path": "/v1/pools",
                                                   "body": {}})
    assert res.status_code == 400
    assert "only domain verbs and migrations are forwarded" in res.json()["message"]


class NoQuorumClient:
    """Linearizable reads fail as they do without quorum; serializable ones answer from
    the local copy."""

    def __init__(self) -> None:
        from xenia.cluster import keys

        self.data = {keys.member("h0"): {"address": "192.0.2.1", "api": "192.0.2.1:8443"},
                     keys.member("h1"): {"address": "192.0.2.2", "api": "192.0.2.2:8443"},
                     keys.host_facts("h0"): {"free_mib": 900, "updated": 1e12},
                     keys.maintenance("h1"): {"since": 1}}

    def _check(self, serializable: bool) -> None:
        from xenia.cluster.client import QuorumLost

        if not serializable:
            raise QuorumLost("Failed to read: the etcd cluster has no quorum")

    def range(self, prefix: str, serializable: bool = False) -> Any:
        from xenia.cluster import keys
        from xenia.cluster.kv import KV

        self._check(serializable)
        return [KV(k, keys.encode(v), 1, 1, 1) for k, v in sorted(self.data.items())
                if k.startswith(prefix)], 1

    def get(self, key: str, serializable: bool = False) -> Any:
        self._check(serializable)
        return None

    def members(self) -> list[dict[str, Any]]:
        from xenia.cluster.client import QuorumLost

        raise QuorumLost("Failed to list the etcd members: no quorum")

    def lease_ttl(self, lease: int) -> int:
        raise AssertionError("no lease reads without quorum")


def test_status_without_quorum_reads_the_local_copy_and_says_so() -> None:
    from xenia.cli.cluster import format_status
    from xenia.cluster.status import cluster_status

    st = cluster_status(NoQuorumClient(), "h0")  # type: ignore[arg-type]
    assert st["quorum"] is False and st["failover"] == "stopped: no etcd quorum"
    assert [h["name"] for h in st["hosts"]] == ["h0", "h1"]
    assert st["hosts"][0]["free_mib"] == 900 and st["hosts"][1]["maintenance"]
    text = "\n".join(format_status(st))
    assert "QUORUM LOST - failover decisions are stopped; running domains keep running" in text
