"""The host's cgroup hierarchies and their files: CgroupLayout, read_value/write_value.

Which hierarchy serves which controller is found once from /proc/self/mountinfo
(CgroupLayout.detect), so the same code works on

- cgroup v1 hosts and hybrid hosts (this machine: cpu, cpuacct, memory, freezer, pids each
  mounted under /sys/fs/cgroup/<name>, plus an almost empty v2 tree at .../unified): a
  group has one directory per v1 hierarchy;
- pure v2 hosts (/sys/fs/cgroup/cgroup.controllers exists): one directory, with the
  controllers switched on for `<root>` through cgroup.subtree_control.

A controller mounted on v1 wins over v2: in hybrid mode the v2 tree usually has none.
The groups themselves: hostos/cgroups.py (DomainCgroup) and hostos/cpuset.py.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from xenia.errors import BackendError, InUse, InvalidConfig, NotFound, XeniaError

ROOT_NAME = "xenia"

# Controllers a domain group lives under. cpuacct gives the group's CPU time on v1; on v2
# that is core (cpu.stat), as the freezer is (cgroup.freeze), so v2 lists both implicitly.
CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "freezer")
# Controllers that v2 must switch on in cgroup.subtree_control; the others are core there.
V2_ENABLE = ("cpu", "memory", "pids")
_V2_CORE = frozenset({"cpuacct", "freezer"})
_V1_KNOWN = frozenset({"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls",
                       "net_prio", "blkio", "perf_event", "hugetlb", "pids", "rdma", "misc"})

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}\Z")
# v1 groups hold a file "tasks": a group of that name could never be made.
_RESERVED = frozenset({"tasks"})
POLL = 0.02


# -- layout ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy: where, which version, which controllers it serves."""

    mount: Path
    version: int  # 1 or 2
    controllers: frozenset[str]
    # v2 only: controllers listed in cgroup.controllers (the ones subtree_control can enable)
    enableable: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class CgroupLayout:
    """The host's cgroup hierarchies; `detect()` reads them from mountinfo."""

    hierarchies: tuple[Hierarchy, ...]

    @classmethod
    def detect(cls, mountinfo: Path = Path("/proc/self/mountinfo")) -> CgroupLayout:
        try:
            text = mountinfo.read_text()
        except OSError as e:
            raise BackendError(f"Failed to find the host's cgroups: cannot read {mountinfo}: "
                               f"{e.strerror}") from e
        found: list[Hierarchy] = []
        seen: set[frozenset[str]] = set()
        for line in text.splitlines():
            left, sep, right = line.partition(" - ")
            if not sep:
                continue
            fields, sfields = left.split(), right.split()
            if len(fields) < 5 or len(sfields) < 3:
                continue
            # mountinfo escapes blanks in paths as octal (\040)
            mount = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))
            fstype, options = sfields[0], set(sfields[2].split(","))
            if fstype == "cgroup":
                ctrls = frozenset(options & _V1_KNOWN)
                # The same hierarchy may be mounted twice; the first mount serves it.
                if ctrls and ctrls not in seen:
                    seen.add(ctrls)
                    found.append(Hierarchy(mount, 1, ctrls))
            elif fstype == "cgroup2" and not any(h.version == 2 for h in found):
                try:
                    listed = frozenset((mount / "cgroup.controllers").read_text().split())
                except OSError:
                    listed = frozenset()
                found.append(Hierarchy(mount, 2, listed | _V2_CORE, listed))
        return cls(tuple(found))

    @property
    def unified(self) -> bool:
        """True on a pure v2 host: no controller we use comes from a v1 hierarchy."""
        used = self.used()
        return bool(used) and all(h.version == 2 for h in used)

    def hierarchy_for(self, controller: str) -> Hierarchy | None:
        """The hierarchy serving `controller`, v1 first; None if the host has it nowhere."""
        for version in (1, 2):
            for h in self.hierarchies:
                if h.version == version and controller in h.controllers:
                    return h
        return None

    def used(self) -> list[Hierarchy]:
        """The distinct hierarchies serving CONTROLLERS (a domain has a group in each)."""
        out: list[Hierarchy] = []
        for ctrl in CONTROLLERS:
            h = self.hierarchy_for(ctrl)
            if h is not None and h not in out:
                out.append(h)
        return out


@functools.cache
def host_layout() -> CgroupLayout:
    """This host's layout, detected once: cgroup mounts do not move under a running daemon."""
    return CgroupLayout.detect()


# -- file access -------------------------------------------------------------------------
def check_name(what: str, value: str) -> None:
    if not NAME_RE.match(value) or value in _RESERVED:
        raise InvalidConfig(
            f"Failed to name a cgroup: {what} '{value}' is not a safe name "
            "(1 to 128 letters, digits, '-' or '_', starting with a letter or digit)")


def os_error(doing: str, path: Path, e: OSError) -> XeniaError:
    """The XeniaError for an OSError on a cgroup file, with a hint where one helps."""
    if e.errno == errno.ENOENT:
        return NotFound(f"Failed {doing}: {path} does not exist (is the cgroup created?)")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return BackendError(f"Failed {doing}: {path}: {e.strerror}; cgroups need root and a "
                            "read-write cgroupfs")
    if e.errno == errno.EBUSY:
        return InUse(f"Failed {doing}: {path} is busy ({e.strerror})")
    return BackendError(f"Failed {doing}: {path}: {e.strerror or e}")


def write_value(path: Path, value: str, doing: str) -> None:
    # One write() call: cgroupfs parses each write on its own.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise os_error(doing, path, e) from e


def read_value(path: Path, doing: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as e:
        raise os_error(doing, path, e) from e


def keyed(text: str, key: str) -> int | None:
    """The number after `key` in a "key value" per line file (cgroup.events, memory.events)."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return int(parts[1])
    return None


def own_group(h: Hierarchy) -> Path:
    """Where this process sits in hierarchy `h` (its root if that cannot be told)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return h.mount
    for line in lines:
        _, ctrls, rel = line.split(":", 2)
        if (h.version == 2 and ctrls == "") or (
                h.version == 1 and set(ctrls.split(",")) & h.controllers):
            path = h.mount / rel.lstrip("/")
            return path if path.is_dir() else h.mount
    return h.mount


def enable_controllers(group: Path, controllers: list[str], doing: str) -> None:
    path = group / "cgroup.subtree_control"
    on = set(read_value(path, doing).split())
    missing = [c for c in controllers if c not in on]
    if missing:
        write_value(path, " ".join(f"+{c}" for c in missing), doing)


def bottom_up(top: Path) -> Iterator[Path]:
    """`top`'s sub-groups deepest first, then `top` (cgroupfs directories only)."""
    if not top.is_dir():
        return
    for dirpath, _dirs, _files in os.walk(top, topdown=False):
        yield Path(dirpath)


def rmdir(path: Path, doing: str, deadline: float) -> None:
    # A task that just exited can keep the group busy a moment after it leaves
    # cgroup.procs (until it is reaped), so EBUSY is retried until the deadline.
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise os_error(doing, path, e) from e
            time.sleep(POLL)


def pid_in_group(pid: int, key: str, root: str = ROOT_NAME) -> bool:
    """True if process `pid` lives and sits in group `<root>/<key>` (or below) of any
    hierarchy: a guard against pid reuse for processes Xenia put there."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    mark = f"/{root}/{key}"
    return any(line.split(":", 2)[-1].startswith(mark) for line in text.splitlines())
