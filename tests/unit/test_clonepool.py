"""ClonePool's bookkeeping (migration/clonepool.py) with a fake manager: which entry a
claim gets, that a dead one is never handed out, and that close() ends the entries and
removes their disk directories. The real QEMUs are in tests/integration/test_snapshots.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from xenia.migration import clonepool
from xenia.migration.clonepool import ClonePool


class FakeInst:
    def __init__(self) -> None:
        self.alive = True
        self.loaded = False
        self.ran = False  # the build went on past receive: claimed, resumed


class FakeManager:
    """build(): start (an instance), hand it to receive (which loads, then waits for the
    claim), then it runs; the undo is not modelled, only that the build ends."""

    def __init__(self) -> None:
        self.insts: list[FakeInst] = []
        self.names: list[str] = []

    async def build(self, rec: Any, *, incoming: str, receive: Any, doing: str) -> Any:
        inst = FakeInst()
        self.insts.append(inst)
        await receive(inst)
        inst.ran = True
        return rec

    async def rename_record(self, rec: Any, name: str) -> None:
        rec.runtime.pop("pooled", None)
        rec.name = name
        self.names.append(name)


class FakeClones:
    def __init__(self, root: Path) -> None:
        self.m = FakeManager()
        self.root = root
        self.staged: list[str] = []

    async def stage(self, ref: str, name: str) -> tuple[Any, Any, Path]:
        cdir = self.root / name
        cdir.mkdir()
        self.staged.append(name)
        return SimpleNamespace(name=name, runtime={}), None, cdir

    def receiver(self, rec: Any, source: Any) -> Any:
        async def load(inst: FakeInst) -> None:
            inst.loaded = True

        return load


async def _settle(pool: ClonePool, ref: str) -> None:
    for _ in range(200):
        if pool.entries(ref) and all(e.ready.is_set() for e in pool.entries(ref)):
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the pool did not fill")


def test_a_claim_gets_the_entry_started_ahead_and_the_pool_refills(tmp_path: Path) -> None:
    async def run() -> None:
        clones = FakeClones(tmp_path)
        pool = ClonePool(clones, size=1)  # type: ignore[arg-type]
        pool.fill("t@s")
        await _settle(pool, "t@s")
        first = clones.m.insts[0]
        rec = await pool.claim("t@s", "c1")
        assert rec is not None and rec.name == "c1" and "pooled" not in rec.runtime
        assert first.loaded
        await _settle(pool, "t@s")
        assert len(pool.entries("t@s")) == 1 and len(clones.m.insts) == 2
        await pool.close()
        assert pool.entries("t@s") == []
        # An unclaimed entry's disk directory goes with it; the claimed one's stays
        # (it is the clone c1's now).
        assert [p.name for p in tmp_path.iterdir()] == [clones.staged[0]]

    asyncio.run(run())


def test_a_dead_entry_is_not_handed_out_and_is_replaced(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setattr(clonepool, "ALIVE_EVERY", 0.01)

    async def run() -> None:
        clones = FakeClones(tmp_path)
        pool = ClonePool(clones, size=1)  # type: ignore[arg-type]
        pool.fill("t@s")
        await _settle(pool, "t@s")
        dead = clones.m.insts[0]
        dead.alive = False
        rec = await pool.claim("t@s", "c1")
        assert rec is not None and rec.name == "c1"
        assert not dead.ran and clones.m.insts[1].ran
        await pool.close()

    asyncio.run(run())


def test_no_pool_at_size_zero_or_once_closed(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(clonepool.SIZE_ENV, "0")
    assert clonepool.pool_size() == 0
    monkeypatch.setenv(clonepool.SIZE_ENV, "many")
    assert clonepool.pool_size() == clonepool.DEFAULT_SIZE

    async def run() -> None:
        clones = FakeClones(tmp_path)
        assert await ClonePool(clones, size=0).claim("t@s", "c1") is None  # type: ignore[arg-type]
        pool = ClonePool(clones, size=1)  # type: ignore[arg-type]
        await pool.close()
        assert await pool.claim("t@s", "c1") is None
        assert clones.m.insts == []

    asyncio.run(run())
