"""CpuPools: xl's cpupool-* commands on the DomainManager (the pools themselves are
hostos/cpupools.py's CpuPoolTable).

A domain's pool is in its runtime (`cpupool`, and `cpupool_cpus` for the driver's
pinning); moving a domain, or changing a pool's CPUs, re-pins the vCPU threads of every
running member to the pool's CPUs.
"""

from __future__ import annotations

import asyncio
from typing import Any

from xenia.errors import InvalidConfig
from xenia.host.manager import DomainManager
from xenia.hostos import affinity
from xenia.hostos.cpupools import POOL0, CpuPoolTable
from xenia.store.base import DomainRecord
from xenia.store.state import LIVE


class CpuPools:
    def __init__(self, manager: DomainManager) -> None:
        self.m = manager
        self.table = CpuPoolTable(manager.store)

    def _members(self) -> dict[str, list[DomainRecord]]:
        out: dict[str, list[DomainRecord]] = {}
        for rec in self.m.store.list():
            out.setdefault(str(rec.runtime.get("cpupool", POOL0)), []).append(rec)
        return out

    def list(self) -> list[dict[str, Any]]:
        members = {k: [r.name for r in v] for k, v in self._members().items()}
        return self.table.describe(members)

    async def create(self, name: str, cpus: str) -> None:
        # The CPU list is resolved in a worker thread (as vcpu-pin's): off the event loop.
        await asyncio.to_thread(self.table.create, name, cpus)

    def destroy(self, name: str) -> None:
        self.table.destroy(name, in_use=bool(self._members().get(name)))

    def rename(self, name: str, new: str) -> None:
        self.table.rename(name, new)
        for rec in self._members().get(name, []):
            rec.runtime["cpupool"] = new
            self.m.store.put(rec)

    async def cpu_add(self, name: str, cpus: str) -> None:
        await asyncio.to_thread(self.table.cpu_add, name, cpus)
        await self._repin(name)

    async def cpu_remove(self, name: str, cpus: str) -> None:
        await asyncio.to_thread(self.table.cpu_remove, name, cpus)
        await self._repin(name)

    async def migrate(self, ref: str, pool: str) -> None:
        rec = self.m.resolve(ref)
        self.table.cpus(pool)  # NotFound for an unknown pool
        async with self.m.locked(rec.uuid):
            rec = self.m.store.get(rec.uuid) or rec
            await self._move(rec, pool)

    async def numa_split(self) -> None:
        """One pool per NUMA node: Pool-0 keeps node 0, node N becomes Pool-node<N>."""
        nodes = affinity.host_nodes()
        if len(nodes) < 2:
            raise InvalidConfig("Failed to split the host into cpupools by NUMA node: it "
                                "has one node; nothing to split")
        for node, cpus in sorted(nodes.items())[1:]:
            self.table.create(f"Pool-node{node}", affinity.ranges(cpus))

    async def _repin(self, pool: str) -> None:
        for rec in self._members().get(pool, []):
            async with self.m.locked(rec.uuid):
                await self._move(self.m.store.get(rec.uuid) or rec, pool)

    async def _move(self, rec: DomainRecord, pool: str) -> None:
        cpus = self.table.cpus(pool)
        if rec.state in LIVE:
            # Pinning first: a domain whose driver cannot pin (a container) stays put.
            await self.m.instance(rec).devices.pin_vcpus(rec, "all", affinity.ranges(cpus))
        rec.runtime["cpupool"] = pool
        rec.runtime["cpupool_cpus"] = sorted(cpus)
        self.m.store.put(rec)
