"""The CPUs of a container domain: the cpuset group `<cpuset hierarchy>/xenia/<uuid>`.

hostos/cgroups.py (DomainCgroup) holds a domain's cpu, cpuacct, memory, pids and freezer
groups; a container also needs a cpuset, which VMs do not (their vCPUs are threads,
pinned one by one), so it lives here: `CpusetGroup`. Which hierarchy serves cpuset is
taken from the same CgroupLayout. `choose_cpus` picks which host CPUs a container with N
vCPUs gets.

xl's `vcpus` is the number of CPUs a domain can use; for a container that is a cpuset
of that many CPUs: out of `cpus=` (default: all), the ones the fewest other containers
have, lowest first. vcpu-set keeps the CPUs it has and adds or drops the busiest.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from xenia.errors import NotSupported
from xenia.hostos.affinity import parse_kernel_cpulist, ranges
from xenia.hostos.cgroupfs import (
    ROOT_NAME,
    CgroupLayout,
    Hierarchy,
    host_layout,
    os_error,
    read_value,
    rmdir,
    write_value,
)


def choose_cpus(allowed: set[int], count: int, current: set[int] | None = None,
                load: Counter[int] | None = None) -> set[int]:
    """`count` CPUs out of `allowed`: those in `current` first, then the least loaded
    (`load`: how many other containers have each CPU), lowest number first. When shrinking,
    the most loaded (then highest) go. `count` must not exceed len(allowed)."""
    load = load or Counter()
    if count > len(allowed):
        raise ValueError(f"{count} CPUs asked out of {len(allowed)}")
    keep = set(current or ()) & allowed
    if len(keep) > count:
        drop = sorted(keep, key=lambda c: (load[c], c), reverse=True)[:len(keep) - count]
        return keep - set(drop)
    extra = sorted(allowed - keep, key=lambda c: (load[c], c))[:count - len(keep)]
    return keep | set(extra)


class CpusetGroup:
    """The cpuset group of one domain (key: its UUID). Constructing touches nothing."""

    def __init__(self, key: str, *, name: str | None = None, root: str = ROOT_NAME,
                 layout: CgroupLayout | None = None) -> None:
        self.key = key
        self.name = name or key
        self.root = root
        self.layout = layout if layout is not None else host_layout()

    @property
    def hierarchy(self) -> Hierarchy | None:
        return self.layout.hierarchy_for("cpuset")

    def available(self) -> bool:
        return self.hierarchy is not None

    def _h(self, doing: str) -> Hierarchy:
        h = self.hierarchy
        if h is None:
            raise NotSupported(f"Failed {doing}: the cpuset controller is not available in "
                               "this host's cgroups, so a container cannot be held to "
                               "fewer CPUs than the host has")
        return h

    @property
    def path(self) -> Path:
        h = self._h(f"to find the cpuset of '{self.name}'")
        return h.mount / self.root / self.key

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def exists(self) -> bool:
        h = self.hierarchy
        return h is not None and (h.mount / self.root / self.key).is_dir()

    def create(self, cpus: set[int]) -> None:
        """Make the group (and `<root>` on first use) holding `cpus`; idempotent."""
        doing = f"to create the cpuset of '{self.name}'"
        h = self._h(doing)
        top = h.mount / self.root
        try:
            top.mkdir(exist_ok=True)
            if h.version == 1:
                # A new v1 cpuset starts with no CPUs and no memory nodes, and no task can
                # join it until both are set: `<root>` gets the host's, once.
                for f in ("cpuset.cpus", "cpuset.mems"):
                    if not read_value(top / f, doing):
                        write_value(top / f, read_value(h.mount / f, doing), doing)
            else:
                for parent in (h.mount, top):
                    on = read_value(parent / "cgroup.subtree_control", doing).split()
                    if "cpuset" not in on:
                        write_value(parent / "cgroup.subtree_control", "+cpuset", doing)
            self.path.mkdir(exist_ok=True)
        except OSError as e:
            raise os_error(doing, top, e) from e
        if h.version == 1:
            write_value(self.path / "cpuset.mems", read_value(top / "cpuset.mems", doing), doing)
        self.set_cpus(cpus)

    def set_cpus(self, cpus: set[int]) -> None:
        doing = f"to set the CPUs of '{self.name}' to {ranges(cpus) or 'none'}"
        self._h(doing)
        write_value(self.path / "cpuset.cpus", ranges(cpus), doing)

    def get(self) -> set[int]:
        doing = f"to read the CPUs of '{self.name}'"
        h = self._h(doing)
        name = "cpuset.cpus" if h.version == 1 else "cpuset.cpus.effective"
        return parse_kernel_cpulist(read_value(self.path / name, doing))

    def remove(self, timeout: float = 5.0) -> None:
        """Remove the group; idempotent. Its processes must be gone (EBUSY is retried
        until `timeout`: a task that just died keeps it busy until reaped)."""
        if not self.exists():
            return
        rmdir(self.path, f"to remove the cpuset of '{self.name}'", time.monotonic() + timeout)
