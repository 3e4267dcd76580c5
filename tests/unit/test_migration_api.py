"""POST /v1/domains/{ref}/migrate: its body is MigrationOptions itself; a bad body is
refused before any migration starts. (The migrations themselves: tests/integration.)"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from fastapi.testclient import TestClient

from xenia.api.app import make_app
from xenia.drivers.base import MigrationOptions


class RecordingSender:
    def __init__(self) -> None:
        self.started: list[tuple[str, Any]] = []
        self.jobs: dict[str, Any] = {}

    async def start(self, ref: str, opts: Any) -> Any:
        self.started.append((ref, opts))
        return SimpleNamespace(view=lambda: {"id": "j1"})


def test_migrate_body_is_the_options() -> None:
    sender = RecordingSender()
    app = make_app(SimpleNamespace(sender=sender))  # type: ignore[arg-type]
    with TestClient(app) as c:
        r = c.post("/v1/domains/vm1/migrate", json={"downtime_ms": "soon"})
        assert r.status_code == 400, r.text
        assert "host" in r.text and "downtime_ms" in r.text
        assert sender.started == []
        r = c.post("/v1/domains/vm1/migrate",
                   json={"host": "b", "downtime_ms": 50, "postcopy": True})
        assert r.status_code == 202 and r.json() == {"id": "j1"}
    assert sender.started == [("vm1", MigrationOptions(host="b", downtime_ms=50,
                                                        postcopy=True))]


def test_unknown_migration_is_not_found() -> None:
    sender = RecordingSender()
    app = make_app(SimpleNamespace(sender=sender))  # type: ignore[arg-type]
    with TestClient(app) as c:
        for r in (c.get("/v1/migrations/j9"), c.post("/v1/migrations/j9/cancel")):
            assert r.status_code == 404, r.text
            assert r.json()["message"] == "Failed to find migration j9"
