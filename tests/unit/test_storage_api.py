"""The /v1/pools routes: thin handlers over a real StorageManager, errors as HTTP codes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from xenia.api.app import make_app
from xenia.host.manager import DomainManager
from xenia.migration.replication import Replication
from xenia.paths import Paths
from xenia.storage.manager import StorageManager
from xenia.store.sqlite import SqliteStore


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    paths = Paths(state=tmp_path / "state", run=tmp_path / "run")
    sm = StorageManager(paths, SqliteStore(paths.db))
    asyncio.run(sm.start())
    # The routers reach the storage manager as app.state.engine.storage (and volume
    # delete the replicated volumes' service, which has none here).
    replication = Replication(DomainManager(paths, sm.store, []), sm)
    app = make_app(SimpleNamespace(storage=sm, replication=replication))  # type: ignore[arg-type]
    with TestClient(app) as c:
        yield c
    sm.store.close()


def test_pools(client: TestClient, tmp_path: Path) -> None:
    assert [p["name"] for p in client.get("/v1/pools").json()] == ["default"]
    r = client.post("/v1/pools", json={"name": "p2", "path": str(tmp_path / "p2")})
    assert r.status_code == 201 and r.json()["location"] == str(tmp_path / "p2")
    assert client.get("/v1/pools/p2").json()["state"] == "active"
    r = client.post("/v1/pools", json={"name": "p2"})
    assert r.status_code == 409 and r.json()["error"] == "already-exists"
    r = client.post("/v1/pools", json={"name": "bad/name"})
    assert r.status_code == 400 and "not a valid pool name" in r.json()["message"]
    assert client.delete("/v1/pools/p2").status_code == 200
    r = client.get("/v1/pools/p2")
    assert r.status_code == 404 and r.json()["message"].startswith("Failed to find pool 'p2'")


def test_volumes(client: TestClient) -> None:
    base = "/v1/pools/default/volumes"
    r = client.post(base, json={"name": "v", "size": "16M"})
    assert r.status_code == 201, r.text
    v = r.json()
    assert (v["name"], v["format"], v["virtual_size"], v["used_by"]) == \
        ("v", "qcow2", 16 * 2**20, None)
    assert client.post(base, json={"name": "r", "size": 2**20, "format": "raw"}
                       ).status_code == 201
    assert client.post(f"{base}/v/clone", json={"name": "c"}).json()["backing"] == "v"
    r = client.post(f"{base}/c/resize", json={"size": "+16M"})
    assert r.json()["virtual_size"] == 32 * 2**20
    r = client.post(f"{base}/c/resize", json={"size": "1M"})
    assert r.status_code == 400 and "--shrink" in r.json()["message"]
    r = client.post(f"{base}/c/snapshots", json={"name": "s"})
    assert r.status_code == 201 and r.json()["name"] == "s"
    assert [s["name"] for s in client.get(f"{base}/c/snapshots").json()] == ["s"]
    assert client.post(f"{base}/c/snapshots/s/restore").status_code == 200
    assert client.delete(f"{base}/c/snapshots/s").status_code == 200
    assert [x["name"] for x in client.get(base).json()] == ["c", "r", "v"]
    r = client.delete(f"{base}/v")
    assert r.status_code == 409 and r.json()["error"] == "in-use"
    r = client.delete("/v1/pools/default")
    assert r.status_code == 409 and "holds 3 volumes" in r.json()["message"]
    r = client.post(base, json={"name": "x", "size": "lots"})
    assert r.status_code == 400 and "is not a size" in r.json()["message"]
    r = client.get(f"{base}/nope")
    assert r.status_code == 404 and "no such volume" in r.json()["message"]
    r = client.get("/v1/pools/nope/volumes")
    assert r.status_code == 404
    for name in ("c", "r", "v"):
        assert client.delete(f"{base}/{name}").status_code == 200
    assert client.get(base).json() == []
