"""Issue 10 §4: a running domain whose QMP does not answer at adoption is kept and
adopted later, never forgotten (host/manager.py, drivers/qemu.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from xenia.config.model import DomainConfig
from xenia.drivers.base import GuestEvents, Instance
from xenia.errors import AdoptLater, BackendError
from xenia.host import manager as manager_mod
from xenia.host.manager import DomainManager
from xenia.paths import Paths
from xenia.store.base import DomainRecord
from xenia.store.sqlite import SqliteStore
from xenia.store.state import RUNNING

UUID = "3f0b2c9e-8d6a-4f51-9b0e-6a1d2c3b4a59"


class StalledThenFine:
    """A driver whose QMP stalls for the first `stalls` adoptions."""

    types = ("pv",)

    def __init__(self, stalls: int) -> None:
        self.stalls = stalls
        self.tries = 0
        self.released: list[str] = []

    async def adopt(self, record: DomainRecord, events: GuestEvents) -> Instance | None:
        self.tries += 1
        if self.tries <= self.stalls:
            raise AdoptLater(f"Failed to adopt '{record.name}': QMP timed out")
        return FakeInstance()  # type: ignore[return-value]

    def release(self, record: DomainRecord) -> None:
        self.released.append(record.uuid)


class FakeInstance:
    alive = True

    async def run_state(self) -> str:
        return "running"


def make(tmp_path: Path, drv: Any) -> tuple[DomainManager, SqliteStore]:
    paths = Paths.from_env(str(tmp_path))
    paths.ensure()
    store = SqliteStore(paths.db)
    cfg = DomainConfig.from_dict({"name": "stuck", "type": "pv", "kernel": "/k"})
    store.put(DomainRecord(uuid=UUID, name="stuck", domid=7, config=cfg, state=RUNNING))
    return DomainManager(paths, store, [drv]), store


def test_stalled_qmp_keeps_the_record_and_adopts_later(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_mod, "ADOPT_RETRY", (0.01, 0.01, 0.01))
    drv = StalledThenFine(stalls=3)
    m, store = make(tmp_path, drv)

    async def main() -> None:
        await m.adopt_all()
        # Not adopted yet, and not forgotten: its record and host side stay.
        rec = store.get(UUID)
        assert rec is not None and drv.released == []
        assert m.adopting(UUID)
        with pytest.raises(BackendError, match="could not take it over yet"):
            m.instance(rec)
        for _ in range(200):
            if not m.adopting(UUID):
                break
            await asyncio.sleep(0.01)
        assert drv.tries == 4
        assert isinstance(m.instance(rec), FakeInstance)
        await m.detach_all()

    asyncio.run(main())
    assert store.get(UUID) is not None and drv.released == []


def test_retries_go_on_past_the_schedule(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_mod, "ADOPT_RETRY", (0.01, 0.01))
    drv = StalledThenFine(stalls=6)
    m, store = make(tmp_path, drv)

    async def main() -> None:
        await m.adopt_all()
        for _ in range(300):
            if not m.adopting(UUID):
                break
            await asyncio.sleep(0.01)
        assert drv.tries == 7
        await m.detach_all()

    asyncio.run(main())
    assert store.get(UUID) is not None


def test_detach_all_stops_the_retries(tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_mod, "ADOPT_RETRY", (5.0,))
    drv = StalledThenFine(stalls=100)
    m, store = make(tmp_path, drv)

    async def main() -> None:
        await m.adopt_all()
        assert m.adopting(UUID)
        await m.detach_all()
        assert not m.adopting(UUID)

    asyncio.run(main())
    assert store.get(UUID) is not None and drv.released == []
