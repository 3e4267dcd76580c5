"""The /v1/networks routes and the `xenia network list` table; no device is created here."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from xenia.api.app import make_app
from xenia.cli.network import format_table
from xenia.network.manager import NetworkManager
from xenia.paths import Paths
from xenia.store.sqlite import SqliteStore


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    paths = Paths(state=tmp_path / "state", run=tmp_path / "run")
    nm = NetworkManager(paths, SqliteStore(paths.db))
    # The routers reach the network manager as app.state.engine.network.
    app = make_app(SimpleNamespace(network=nm))  # type: ignore[arg-type]
    with TestClient(app) as c:
        yield c
    asyncio.run(nm.stop())
    nm.store.close()


def test_empty_list(client: TestClient) -> None:
    r = client.get("/v1/networks")
    assert r.status_code == 200 and r.json() == []


def test_unknown_network(client: TestClient) -> None:
    r = client.get("/v1/networks/nope")
    assert r.status_code == 404
    assert r.json() == {"error": "not-found", "message": "Failed to find network 'nope': "
                        "there is no network 'nope' (see `xenia network list`)"}
    r = client.delete("/v1/networks/nope")
    assert r.status_code == 404 and r.json()["message"].startswith("Failed to delete network")


@pytest.mark.parametrize("body,status,text", [
    ({"name": "bad/name"}, 400, "invalid network name 'bad/name'"),
    ({"name": "x" * 16, "nat": True}, 400, "invalid network name"),
    ({"name": "xtn", "subnet": "10.1.0.0/24"}, 400, "--subnet needs --nat"),
    ({"name": "xtn", "nat": True, "interface": "eth0"}, 400, "--interface is for plain"),
    ({"nat": True}, 400, "Failed to read the request"),
])
def test_create_bad_input(client: TestClient, body: dict, status: int, text: str) -> None:
    r = client.post("/v1/networks", json=body)
    assert r.status_code == status, r.text
    assert text in r.json()["message"]


def test_list_table() -> None:
    rows: list[dict[str, Any]] = [
        {"name": "natnet", "bridge": "natnet", "type": "nat", "subnet": "10.122.0.0/24",
         "dhcp": True, "taps": ["vif1.0", "vif2.0"], "state": "active"},
        {"name": "xenbr0", "bridge": "xenbr0", "type": "bridge", "subnet": None,
         "dhcp": False, "taps": [], "state": "missing"},
    ]
    lines = format_table(rows)
    assert lines[0].split() == ["NAME", "BRIDGE", "TYPE", "SUBNET", "DHCP", "TAPS", "STATE"]
    assert lines[1].split() == ["natnet", "natnet", "nat", "10.122.0.0/24", "yes", "2", "active"]
    assert lines[2].split() == ["xenbr0", "xenbr0", "bridge", "-", "no", "0", "missing"]
    # columns line up
    assert lines[0].index("SUBNET") == lines[1].index("10.122") == lines[2].index("-")
