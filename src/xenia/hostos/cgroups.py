"""Per-domain cgroups: CPU weight and cap, memory limit, freezer; the main class is DomainCgroup.

Every domain (VM or container) gets a group `<root>/<key>` (root "xenia", key a safe name
chosen by the caller, e.g. the domain UUID) in each cgroup hierarchy that serves one of
the controllers we use (hostos/cgroupfs.py finds them, on v1, hybrid and v2 hosts alike).

xl's credit scheduler maps onto the CPU controller (sched-credit -w/-c, cpu_weight= and
cap=): the weight (1..65535, default 256) becomes a relative share, the cap (percent of one
physical CPU, 0 = none) a CFS bandwidth quota per 100 ms period.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from xenia.errors import BackendError, InUse, InvalidConfig, NotFound, NotSupported
from xenia.hostos.cgroupfs import (
    CONTROLLERS,
    NAME_RE,
    POLL,
    ROOT_NAME,
    V2_ENABLE,
    CgroupLayout,
    Hierarchy,
    bottom_up,
    check_name,
    enable_controllers,
    host_layout,
    keyed,
    os_error,
    own_group,
    read_value,
    rmdir,
    write_value,
)

WEIGHT_MIN, WEIGHT_MAX, WEIGHT_DEFAULT = 1, 65535, 256
CAP_MIN, CAP_MAX = 0, 65535  # xl keeps the cap in a uint16
PERIOD_US = 100_000  # the CFS period the cap is a share of (also the kernel's default)
_SHARES_MIN, _SHARES_MAX = 2, 262_144  # kernel limits of v1 cpu.shares
_V2_WEIGHT_MIN, _V2_WEIGHT_MAX = 1, 10_000  # kernel limits of v2 cpu.weight
# v1 reports "no memory limit" as PAGE_COUNTER_MAX pages, rounded to a page: ~2**63.
_V1_UNLIMITED = 2**62


# -- conversions (pure) ------------------------------------------------------------------
def weight_to_shares(weight: int) -> int:
    """xl credit weight -> v1 cpu.shares: default 256 -> the kernel's default 1024 (x4)."""
    return max(_SHARES_MIN, min(_SHARES_MAX, weight * 4))


def shares_to_weight(shares: int) -> int:
    return max(WEIGHT_MIN, min(WEIGHT_MAX, round(shares / 4)))


def weight_to_cpu_weight(weight: int) -> int:
    """xl credit weight -> v2 cpu.weight: linear, 256 -> the kernel's default 100."""
    return max(_V2_WEIGHT_MIN, min(_V2_WEIGHT_MAX, round(weight * 100 / WEIGHT_DEFAULT)))


def cpu_weight_to_weight(cpu_weight: int) -> int:
    """Inverse of weight_to_cpu_weight; lossy (v2 has fewer steps, and clamps at 10000)."""
    return max(WEIGHT_MIN, min(WEIGHT_MAX, round(cpu_weight * WEIGHT_DEFAULT / 100)))


def cap_to_quota(cap: int) -> int | None:
    """xl cap (percent of one CPU, 0 = none) -> CFS quota in us per PERIOD_US, None = none."""
    return None if cap == 0 else cap * PERIOD_US // 100


def quota_to_cap(quota: int | None, period: int) -> int:
    if quota is None or quota < 0:
        return 0
    return max(1, round(quota * 100 / period))


# -- the domain's group -------------------------------------------------------------------
class DomainCgroup:
    """The cgroup(s) of one domain: `<hierarchy>/<root>/<key>` in every used hierarchy.

    Constructing touches nothing; `create()` makes the directories. `name` is what error
    messages call the domain (default: the key).
    """

    def __init__(self, key: str, *, name: str | None = None, root: str = ROOT_NAME,
                 layout: CgroupLayout | None = None) -> None:
        check_name("key", key)
        check_name("root", root)
        self.key = key
        self.name = name or key
        self.root = root
        self.layout = layout if layout is not None else host_layout()
        self._used = self.layout.used()

    @classmethod
    def create(cls, key: str, *, name: str | None = None, root: str = ROOT_NAME,
               layout: CgroupLayout | None = None) -> DomainCgroup:
        """Make the domain's groups (and `<root>` on first use); idempotent, so a restarted
        daemon re-adopting a domain gets the existing groups back (settings kept). If it
        fails half-way, remove() cleans up what was made."""
        cg = cls(key, name=name, root=root, layout=layout)
        doing = f"to create the cgroup of '{cg.name}'"
        used = cg.layout.used()
        if not used:
            raise NotSupported(f"Failed {doing}: this host has no cgroup hierarchy with any of "
                               f"the controllers {', '.join(CONTROLLERS)} mounted")
        for h in used:
            top = h.mount / root
            try:
                top.mkdir(exist_ok=True)
            except OSError as e:
                raise os_error(doing, top, e) from e
            if h.version == 2:
                # Controllers must be on in every ancestor's subtree_control before the
                # domain's group has their files; the root first, then `<root>`.
                wanted = [c for c in V2_ENABLE if c in h.enableable]
                for parent in (h.mount, top):
                    enable_controllers(parent, wanted, doing)
            try:
                (top / key).mkdir(exist_ok=True)
            except OSError as e:
                raise os_error(doing, top / key, e) from e
        return cg

    # -- paths ---------------------------------------------------------------------------
    def _dir(self, h: Hierarchy) -> Path:
        return h.mount / self.root / self.key

    def path(self, controller: str) -> Path:
        """The domain's directory in the hierarchy serving `controller`."""
        return self._ctrl(controller, f"to find the cgroup of '{self.name}'")[1]

    def _ctrl(self, controller: str, doing: str) -> tuple[Hierarchy, Path]:
        h = self.layout.hierarchy_for(controller)
        if h is None:
            how = ("mount it (cgroup v1) or enable it in the kernel"
                   if not any(x.version == 2 for x in self.layout.hierarchies)
                   else "the kernel must have it and it must not be held by another "
                        "hierarchy")
            raise NotSupported(f"Failed {doing}: the {controller} controller is not "
                               f"available in this host's cgroups ({how})")
        return h, self._dir(h)

    def exists(self) -> bool:
        """True if the group exists in every used hierarchy."""
        return bool(self._used) and all(self._dir(h).is_dir() for h in self._used)

    def pids(self) -> set[int]:
        """The processes (thread group ids) in the group and its sub-groups, from all
        hierarchies."""
        found: set[int] = set()
        for h in self._used:
            for group in bottom_up(self._dir(h)):
                path = group / "cgroup.procs"
                try:
                    found.update(int(x) for x in path.read_text().split())
                except FileNotFoundError:
                    continue  # removed meanwhile
                except OSError as e:
                    raise os_error(f"to list the processes of '{self.name}'", path, e) from e
        return found

    # -- processes -----------------------------------------------------------------------
    def attach(self, pid: int) -> None:
        """Move process `pid` with all its threads (cgroup.procs moves the thread group)
        into the group in every hierarchy; threads it starts later follow."""
        doing = f"to attach process {pid} to the cgroup of '{self.name}'"
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise InvalidConfig(f"Failed {doing}: not a process id")
        for h in self._used:
            path = self._dir(h) / "cgroup.procs"
            try:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, str(pid).encode())
                finally:
                    os.close(fd)
            except ProcessLookupError as e:
                raise NotFound(f"Failed {doing}: no such process") from e
            except OSError as e:
                raise os_error(doing, path, e) from e

    # -- CPU -----------------------------------------------------------------------------
    def set_weight(self, weight: int) -> None:
        """xl's credit weight (1..65535, default 256): v1 cpu.shares = 4 x weight, v2
        cpu.weight = weight x 100/256 clamped to 1..10000. Relative to other domains."""
        doing = f"to set credit weight of '{self.name}'"
        if isinstance(weight, bool) or not isinstance(weight, int) or not (
                WEIGHT_MIN <= weight <= WEIGHT_MAX):
            raise InvalidConfig(f"Failed {doing}: {weight} is out of range "
                                f"{WEIGHT_MIN}..{WEIGHT_MAX}")
        h, d = self._ctrl("cpu", doing)
        if h.version == 1:
            write_value(d / "cpu.shares", str(weight_to_shares(weight)), doing)
        else:
            write_value(d / "cpu.weight", str(weight_to_cpu_weight(weight)), doing)

    def set_cap(self, cap: int) -> None:
        """xl's cap: percent of one physical CPU the whole domain may use (0 = no cap,
        100 = one CPU, 200 = two), enforced as a CFS quota per 100 ms period."""
        doing = f"to set credit cap of '{self.name}'"
        if isinstance(cap, bool) or not isinstance(cap, int) or not (CAP_MIN <= cap <= CAP_MAX):
            raise InvalidConfig(f"Failed {doing}: {cap} is out of range {CAP_MIN}..{CAP_MAX}")
        h, d = self._ctrl("cpu", doing)
        quota = cap_to_quota(cap)
        if h.version == 1:
            # Period first: a quota is checked against the period in force.
            write_value(d / "cpu.cfs_period_us", str(PERIOD_US), doing)
            write_value(d / "cpu.cfs_quota_us", str(-1 if quota is None else quota), doing)
        else:
            write_value(d / "cpu.max", f"{'max' if quota is None else quota} {PERIOD_US}", doing)

    def get(self) -> dict[str, int]:
        """{"weight", "cap"} read back from the kernel's files (on v2 the weight is
        approximate: cpu.weight has fewer steps than xl's weight)."""
        doing = f"to read credit parameters of '{self.name}'"
        h, d = self._ctrl("cpu", doing)
        if h.version == 1:
            weight = shares_to_weight(int(read_value(d / "cpu.shares", doing)))
            period = int(read_value(d / "cpu.cfs_period_us", doing))
            quota = int(read_value(d / "cpu.cfs_quota_us", doing))
            return {"weight": weight, "cap": quota_to_cap(quota, period)}
        weight = cpu_weight_to_weight(int(read_value(d / "cpu.weight", doing)))
        quota_s, _, period_s = read_value(d / "cpu.max", doing).partition(" ")
        v2quota = None if quota_s == "max" else int(quota_s)
        return {"weight": weight, "cap": quota_to_cap(v2quota, int(period_s or PERIOD_US))}

    def cpu_time(self) -> float:
        """CPU seconds used by every process that has been in the group."""
        doing = f"to read the CPU time of '{self.name}'"
        h, d = self._ctrl("cpuacct", doing)
        if h.version == 1:
            return int(read_value(d / "cpuacct.usage", doing)) / 1e9
        usec = keyed(read_value(d / "cpu.stat", doing), "usage_usec")
        return (usec or 0) / 1e6

    # -- memory --------------------------------------------------------------------------
    def set_memory_limit(self, limit: int | None) -> None:
        """Hard limit on the group's memory in bytes (None: none). Past it the kernel
        reclaims and then OOM-kills inside the group only. Swap is not limited."""
        doing = f"to set the memory limit of '{self.name}'"
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 4096):
            raise InvalidConfig(f"Failed {doing}: {limit} is not a size in bytes of at "
                                "least 4096 (or None for no limit)")
        h, d = self._ctrl("memory", doing)
        name, value = (("memory.limit_in_bytes", "-1" if limit is None else str(limit))
                       if h.version == 1 else
                       ("memory.max", "max" if limit is None else str(limit)))
        try:
            write_value(d / name, value, doing)
        except InUse as e:
            # v1 refuses a limit below what the group uses and cannot reclaim.
            raise InUse(f"Failed {doing} to {limit} bytes: the group uses "
                        f"{self.memory_usage()} bytes and the kernel could not reclaim "
                        "enough; free memory in the domain first") from e

    def memory_limit(self) -> int | None:
        doing = f"to read the memory limit of '{self.name}'"
        h, d = self._ctrl("memory", doing)
        if h.version == 1:
            value = int(read_value(d / "memory.limit_in_bytes", doing))
            return None if value >= _V1_UNLIMITED else value
        text = read_value(d / "memory.max", doing)
        return None if text == "max" else int(text)

    def memory_usage(self) -> int:
        """Bytes the group uses now (page cache included, as the kernel counts it)."""
        doing = f"to read the memory use of '{self.name}'"
        h, d = self._ctrl("memory", doing)
        return int(read_value(d / ("memory.usage_in_bytes" if h.version == 1
                              else "memory.current"), doing))

    def oom_kills(self) -> int:
        """How many processes the OOM killer has killed in the group."""
        doing = f"to read the OOM kills of '{self.name}'"
        h, d = self._ctrl("memory", doing)
        text = read_value(d / ("memory.oom_control" if h.version == 1 else "memory.events"), doing)
        return keyed(text, "oom_kill") or 0

    # -- freezer -------------------------------------------------------------------------
    def freeze(self, timeout: float = 5.0) -> None:
        """Stop every task in the group; returns once the kernel says all are frozen."""
        doing = f"to freeze '{self.name}'"
        h, d = self._ctrl("freezer", doing)
        deadline = time.monotonic() + timeout
        while True:
            if h.version == 1:
                # Rewriting FROZEN retries tasks that were busy in the kernel last time.
                write_value(d / "freezer.state", "FROZEN", doing)
            else:
                write_value(d / "cgroup.freeze", "1", doing)
            if self.frozen():
                return
            if time.monotonic() >= deadline:
                raise BackendError(f"Failed {doing}: tasks still not frozen after {timeout:g} "
                                   "s (one may be stuck in the kernel); thaw it or try again")
            time.sleep(POLL)

    def thaw(self) -> None:
        doing = f"to thaw '{self.name}'"
        h, d = self._ctrl("freezer", doing)
        if h.version == 1:
            write_value(d / "freezer.state", "THAWED", doing)
        else:
            write_value(d / "cgroup.freeze", "0", doing)

    def frozen(self) -> bool:
        """True once every task is frozen (a freeze under way is not frozen yet)."""
        doing = f"to read the freezer state of '{self.name}'"
        h, d = self._ctrl("freezer", doing)
        if h.version == 1:
            return read_value(d / "freezer.state", doing) == "FROZEN"
        return keyed(read_value(d / "cgroup.events", doing), "frozen") == 1

    # -- removal -------------------------------------------------------------------------
    def remove(self, timeout: float = 5.0, evict: bool = False) -> None:
        """Remove the group (and any sub-groups) from every hierarchy; idempotent.

        If processes are still in it, thaws it (on v1 frozen tasks cannot even die) and
        waits up to `timeout` s for them to leave (timeout 0, no evict: fails at once and
        leaves it as it is). If some remain: InUse, or with `evict`,
        they are moved back to this process's own group (on v2 `<root>` cannot hold
        processes) and the group goes anyway. The caller stops the domain first; this
        only cleans up.
        """
        doing = f"to remove the cgroup of '{self.name}'"
        present = [h for h in self._used if self._dir(h).is_dir()]
        if not present:
            return
        deadline = time.monotonic() + timeout
        left = self.pids()
        # Not thawed when it would not help: a frozen group that is still in use stays so.
        if left and (evict or timeout > 0) and (
                self.layout.hierarchy_for("freezer") in present):
            self.thaw()
        while left and time.monotonic() < deadline:
            time.sleep(POLL)
            left = self.pids()
        if left and not evict:
            listed = ", ".join(map(str, sorted(left)))
            raise InUse(f"Failed {doing}: process{'es' if len(left) > 1 else ''} {listed} "
                        f"{'are' if len(left) > 1 else 'is'} still in it; stop the domain "
                        "first")
        for h in present:
            if left:
                target = own_group(h) / "cgroup.procs"
                for pid in left:
                    try:
                        write_value(target, str(pid), doing)
                    except NotFound:
                        continue  # exited meanwhile (or the target vanished: rmdir says)
            for sub in bottom_up(self._dir(h)):
                rmdir(sub, doing, deadline)

    # -- misc ----------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"DomainCgroup({self.key!r}, root={self.root!r})"


# -- housekeeping -------------------------------------------------------------------------
def domain_keys(*, root: str = ROOT_NAME, layout: CgroupLayout | None = None) -> set[str]:
    """Keys of the domain groups under `<root>` in any used hierarchy."""
    check_name("root", root)
    layout = layout if layout is not None else host_layout()
    keys: set[str] = set()
    for h in layout.used():
        try:
            entries = list((h.mount / root).iterdir())
        except FileNotFoundError:
            continue
        except OSError as e:
            raise os_error("to list domain cgroups", h.mount / root, e) from e
        keys.update(p.name for p in entries if p.is_dir() and NAME_RE.match(p.name))
    return keys


@dataclass
class GcResult:
    removed: list[str] = field(default_factory=list)  # empty groups of unknown keys, gone
    busy: list[str] = field(default_factory=list)  # unknown keys whose groups have processes


def collect_garbage(keep: Iterable[str], *, root: str = ROOT_NAME,
                    layout: CgroupLayout | None = None) -> GcResult:
    """Remove the empty groups whose key is not in `keep` (groups of domains that are
    gone). Groups that still hold processes are left alone and listed in `busy`: they
    belong to something the caller did not expect, which it should report.

    xeniad does not sweep at start-up: every XENIA_ROOT on a machine (the namespaced test
    hosts, say) shares `xenia/`, and another root's domain may be between creating its
    group and moving its process in. Each domain's group goes with the domain instead
    (Driver.release)."""
    keep = set(keep)
    result = GcResult()
    for key in sorted(domain_keys(root=root, layout=layout) - keep):
        cg = DomainCgroup(key, root=root, layout=layout)
        try:
            cg.remove(timeout=0.0)
        except InUse:
            result.busy.append(key)
        else:
            result.removed.append(key)
    return result
