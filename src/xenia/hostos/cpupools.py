"""CpuPoolTable: xl's cpupools as sets of host CPUs, kept in the store.

A cpupool here is a name and a set of host CPUs; a domain in a pool has its vCPU threads
pinned inside them (drivers/qemu_cpu.py). Pool-0 is not stored: it is every host CPU no
other pool holds, so a CPU is always in exactly one pool, as in xl. Linux has one
scheduler for all CPUs, so a pool has no scheduler of its own (`sched=` is refused).
"""

from __future__ import annotations

from typing import Any

from xenia.config.names import NAME_RULE, valid_name
from xenia.errors import AlreadyExists, InUse, InvalidConfig, NotFound
from xenia.hostos import affinity
from xenia.store.base import Store

KIND = "cpupool"
POOL0 = "Pool-0"


class CpuPoolTable:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _stored(self) -> dict[str, set[int]]:
        return {d["name"]: set(d["cpus"]) for d in self.store.obj_list(KIND)}

    def pools(self) -> dict[str, set[int]]:
        """Every pool's CPUs, Pool-0 first."""
        stored = self._stored()
        taken = set[int]().union(*stored.values()) if stored else set()
        return {POOL0: affinity.host_cpu_set() - taken, **stored}

    def cpus(self, name: str) -> set[int]:
        pools = self.pools()
        if name not in pools:
            raise NotFound(f"Failed to find cpupool '{name}': pools are "
                           f"{', '.join(pools)} (`xenia cpupool-list`)")
        return pools[name]

    def _save(self, name: str, cpus: set[int], create: bool = False) -> None:
        self.store.obj_put(KIND, name, {"name": name, "cpus": sorted(cpus)}, create=create)

    def _free(self, text: str, doing: str) -> set[int]:
        """CPUs of CPULIST `text`, all of which must be in Pool-0, which keeps one."""
        cpus = affinity.resolve_cpulist(text, doing=doing)
        free = self.pools()[POOL0]
        if cpus - free:
            raise InUse(f"Failed to {doing}: CPUs {affinity.ranges(cpus - free)} are in "
                        "another pool; cpupool-cpu-remove them there first")
        if not free - cpus:
            raise InvalidConfig(f"Failed to {doing}: {POOL0} must keep at least one CPU")
        return cpus

    def create(self, name: str, cpus_text: str) -> None:
        doing = f"create cpupool '{name}'"
        if not valid_name(name):
            raise InvalidConfig(f"Failed to {doing}: invalid name ({NAME_RULE})")
        if name in self.pools():
            raise AlreadyExists(f"Failed to {doing}: it exists")
        self._save(name, self._free(cpus_text, doing), create=True)

    def destroy(self, name: str, in_use: bool) -> None:
        self._stored_or_fail(name, "destroy")
        if in_use:
            raise InUse(f"Failed to destroy cpupool '{name}': domains are in it; "
                        "cpupool-migrate them first")
        self.store.obj_delete(KIND, name)

    def rename(self, name: str, new: str) -> None:
        cpus = self._stored_or_fail(name, "rename")
        if not valid_name(new) or new in self.pools():
            raise InvalidConfig(f"Failed to rename cpupool '{name}': '{new}' is taken or "
                                f"invalid ({NAME_RULE})")
        self._save(new, cpus, create=True)
        self.store.obj_delete(KIND, name)

    def cpu_add(self, name: str, cpus_text: str) -> None:
        cpus = self._stored_or_fail(name, "add CPUs to")
        self._save(name, cpus | self._free(cpus_text, f"add CPUs to cpupool '{name}'"))

    def cpu_remove(self, name: str, cpus_text: str) -> None:
        cpus = self._stored_or_fail(name, "remove CPUs from")
        gone = affinity.resolve_cpulist(cpus_text, doing=f"remove CPUs from '{name}'")
        if not cpus - gone:
            raise InvalidConfig(f"Failed to remove CPUs from cpupool '{name}': it would have "
                                "none left (cpupool-destroy it instead)")
        self._save(name, cpus - gone)

    def _stored_or_fail(self, name: str, doing: str) -> set[int]:
        stored = self._stored()
        if name == POOL0:
            raise InvalidConfig(f"Failed to {doing} {POOL0}: it is every CPU the other "
                                "pools do not hold")
        if name not in stored:
            raise NotFound(f"Failed to {doing} cpupool '{name}': no such pool")
        return stored[name]

    def describe(self, members: dict[str, list[str]]) -> list[dict[str, Any]]:
        return [{"name": n, "cpus": sorted(c), "cpulist": affinity.ranges(c) if c else "",
                 "sched": "linux", "domains": members.get(n, [])}
                for n, c in self.pools().items()]
