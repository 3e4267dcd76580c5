"""Cgroup limits of container domains beyond the VM ones: processes and swap.

- `set_pids_max`: the pids controller's pids.max (v1 and v2 alike), so a fork bomb stops
  at the container's limit (config `pids_limit`, default DEFAULT_PIDS_LIMIT, podman's)
  instead of filling the host's pid table;
- `set_memory`: the memory limit with swap held to it: on v1 memory.memsw.limit_in_bytes
  (memory + swap) equals memory.limit_in_bytes, on v2 memory.swap.max is 0. So `memory`
  bounds what the container takes from the host, RAM or swap; Docker's default would let
  it take as much swap again.

Both act on a DomainCgroup (host/cgroups.py), whose groups Xenia makes for containers as
for VMs.
"""

from __future__ import annotations

import logging

from xenia.errors import InUse, InvalidConfig
from xenia.hostos.cgroupfs import read_value, write_value
from xenia.hostos.cgroups import DomainCgroup

log = logging.getLogger(__name__)

DEFAULT_PIDS_LIMIT = 2048
MAX_PIDS_LIMIT = 4_194_304  # the kernel's PID_MAX_LIMIT on 64-bit


def set_pids_max(cg: DomainCgroup, limit: int | None) -> None:
    """At most `limit` tasks (processes and threads) in the group; None or 0: no limit."""
    doing = f"to set the process limit of '{cg.name}'"
    if limit is not None and not 0 <= limit <= MAX_PIDS_LIMIT:
        raise InvalidConfig(f"Failed {doing}: {limit} is not from 0 to {MAX_PIDS_LIMIT}")
    write_value(cg.path("pids") / "pids.max", str(limit) if limit else "max", doing)


def pids_max(cg: DomainCgroup) -> int | None:
    text = read_value(cg.path("pids") / "pids.max", f"to read the process limit of "
                      f"'{cg.name}'")
    return None if text == "max" else int(text)


def _swap_file(cg: DomainCgroup) -> tuple[int, str] | None:
    """(cgroup version, name) of the file that limits the group's swap; None if the host
    has none (no swap accounting: then no swap is charged to the group either)."""
    h = cg.layout.hierarchy_for("memory")
    if h is None:
        return None
    name = "memory.memsw.limit_in_bytes" if h.version == 1 else "memory.swap.max"
    return (h.version, name) if (cg.path("memory") / name).exists() else None


_warned_no_swap_accounting = False


def _warn_no_swap_accounting(cg: DomainCgroup) -> None:
    global _warned_no_swap_accounting
    if _warned_no_swap_accounting:
        return
    _warned_no_swap_accounting = True
    h = cg.layout.hierarchy_for("memory")
    name = "memory.swap.max" if h is not None and h.version == 2 else \
        "memory.memsw.limit_in_bytes"
    log.warning("this host has no swap accounting (no %s): a container's swap is not held "
                "to its memory limit, and it can use the host's swap beyond it; boot the "
                "kernel with swapaccount=1 (its record says swap_limited: false)", name)


def set_memory(cg: DomainCgroup, limit: int) -> bool:
    """Memory limit `limit` bytes, swap included (see the module docstring). False if
    the host has no swap accounting, so swap stays unlimited (a warning, once a
    process)."""
    swap = _swap_file(cg)
    if swap is None:
        cg.set_memory_limit(limit)
        _warn_no_swap_accounting(cg)
        return False
    version, name = swap
    path = cg.path("memory") / name
    doing = f"to set the memory+swap limit of '{cg.name}'"
    if version == 2:
        cg.set_memory_limit(limit)
        write_value(path, "0", doing)
        return True
    # v1 keeps memsw >= limit at every moment: raise memsw first when growing, lower
    # the plain limit first when shrinking or when there was none (memsw may not go below
    # an unlimited limit).
    current = cg.memory_limit()
    try:
        if current is not None and limit > current:
            write_value(path, str(limit), doing)
            cg.set_memory_limit(limit)
        else:
            cg.set_memory_limit(limit)
            write_value(path, str(limit), doing)
    except InUse as e:
        raise InUse(f"Failed {doing} to {limit} bytes: the group uses "
                    f"{cg.memory_usage()} bytes and the kernel could not reclaim enough; "
                    "free memory in the domain first") from e
    return True


def swap_limit(cg: DomainCgroup) -> int | None:
    """The group's memory+swap (v1) or swap (v2) limit in bytes; None: none or no file."""
    swap = _swap_file(cg)
    if swap is None:
        return None
    text = read_value(cg.path("memory") / swap[1], f"to read the swap limit of '{cg.name}'")
    if text == "max" or int(text) >= 2**62:
        return None
    return int(text)
