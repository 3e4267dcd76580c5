"""cpupools: the table of pools over the real store, and the pinning inside a pool."""

from __future__ import annotations

from pathlib import Path

import pytest

from xenia.config.model import DomainConfig
from xenia.drivers import qemu_cpu
from xenia.errors import AlreadyExists, InUse, InvalidConfig, NotFound
from xenia.hostos import affinity
from xenia.hostos.cpupools import POOL0, CpuPoolTable
from xenia.store.base import DomainRecord
from xenia.store.sqlite import SqliteStore


@pytest.fixture
def table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CpuPoolTable:
    # An 8-CPU host, whatever this machine has.
    monkeypatch.setattr(affinity, "host_cpu_set", lambda host_cpus=None: set(range(8)))
    return CpuPoolTable(SqliteStore(tmp_path / "x.db"))


def test_pools_partition_the_host_cpus(table: CpuPoolTable) -> None:
    assert table.pools() == {POOL0: set(range(8))}
    table.create("web", "4-5")
    table.cpu_add("web", "6")
    assert table.pools() == {POOL0: {0, 1, 2, 3, 7}, "web": {4, 5, 6}}
    with pytest.raises(InUse, match="in another pool"):
        table.create("db", "5-7")
    with pytest.raises(AlreadyExists):
        table.create("web", "7")
    with pytest.raises(InvalidConfig, match="keep at least one CPU"):
        table.create("db", "0-3,7")
    table.cpu_remove("web", "4")
    assert table.cpus(POOL0) == {0, 1, 2, 3, 4, 7}
    with pytest.raises(InvalidConfig, match="none left"):
        table.cpu_remove("web", "5-6")
    table.rename("web", "front")
    with pytest.raises(InUse, match="domains are in it"):
        table.destroy("front", in_use=True)
    table.destroy("front", in_use=False)
    assert table.pools() == {POOL0: set(range(8))}
    with pytest.raises(NotFound):
        table.cpus("front")
    with pytest.raises(InvalidConfig, match="Pool-0"):
        table.destroy(POOL0, in_use=False)


def test_vcpus_are_pinned_inside_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    pinned: dict[int, set[int]] = {}
    monkeypatch.setattr(affinity, "host_cpu_set", lambda host_cpus=None: set(range(8)))
    monkeypatch.setattr(affinity, "set_thread_affinity",
                        lambda tid, cpus: pinned.__setitem__(tid, cpus))
    rec = DomainRecord(uuid="u", name="d", domid=1, config=DomainConfig(name="d"),
                       runtime={"cpupool": "web", "cpupool_cpus": [4, 5]})
    qemu_cpu.pin_threads(rec, {0: 100})
    assert pinned == {100: {4, 5}}
    rec.config.cpus = "5-7"
    qemu_cpu.pin_threads(rec, {0: 100})
    assert pinned == {100: {5}}
    rec.config.cpus = "0-1"
    with pytest.raises(InvalidConfig, match="no CPU in its cpupool"):
        qemu_cpu.pin_threads(rec, {0: 100})
