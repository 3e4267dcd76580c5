"""vCPU pinning: `vcpu-pin`, the `cpus=` key and `vcpu-list`.

A vCPU is a QEMU thread, so pinning one is sched_setaffinity() on its thread id, and its
row in `vcpu-list` comes from /proc/<pid>/task/<tid>/stat (hostos/procfs.py). The xl
CPULIST syntax is parsed by xenia.config.cpulist; resolve_cpulist() turns it into this
host's CPU numbers (it alone knows the host: how many CPUs, which NUMA node has which).
Main entry points: resolve_cpulist, set_thread_affinity, get_thread_affinity.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from xenia.config.cpulist import parse_terms  # the syntax; this module adds the host
from xenia.errors import BackendError, InvalidConfig, NotFound

SYS_CPU = Path("/sys/devices/system/cpu")
SYS_NODE = Path("/sys/devices/system/node")


# -- the host's CPUs and nodes -----------------------------------------------------------
def parse_kernel_cpulist(text: str) -> set[int]:
    """The kernel's list format ("0-3,8,10-11", as in sysfs cpulist files) as a set."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def host_cpu_set(host_cpus: int | None = None) -> set[int]:
    """CPUs 0..host_cpus-1 if given, else this host's online CPUs (an offline CPU cannot
    run a thread, so pinning to one would fail)."""
    if host_cpus is not None:
        return set(range(host_cpus))
    try:
        return parse_kernel_cpulist((SYS_CPU / "online").read_text())
    except OSError:
        return set(range(os.cpu_count() or 1))


def host_nodes(cpus: set[int] | None = None) -> dict[int, set[int]]:
    """NUMA node -> its CPUs (limited to `cpus`, default the online CPUs). A kernel without
    NUMA support has no node directory: then everything is node 0."""
    cpus = host_cpu_set() if cpus is None else cpus
    nodes: dict[int, set[int]] = {}
    try:
        entries = list(SYS_NODE.iterdir())
    except OSError:
        entries = []
    for entry in entries:
        if entry.name.startswith("node") and entry.name[4:].isdigit():
            try:
                nodes[int(entry.name[4:])] = (
                    parse_kernel_cpulist((entry / "cpulist").read_text()) & cpus)
            except OSError:
                continue
    return nodes or {0: set(cpus)}


# -- CPULIST -> CPUs ---------------------------------------------------------------------
def ranges(cpus: Iterable[int]) -> str:
    """Sorted numbers as ranges: {0, 1, 2, 3, 5} -> "0-3,5"."""
    parts: list[str] = []
    run: list[int] = []
    for cpu in sorted(cpus):
        if run and cpu == run[-1] + 1:
            run.append(cpu)
            continue
        if run:
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [cpu]
    if run:
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(parts)


def resolve_cpulist(text: str, host_cpus: int | None = None, *,
                    nodes: Mapping[int, set[int]] | None = None, doing: str = "pin") -> set[int]:
    """The CPUs an xl CPULIST ("all", "0-3,^1", "node:0", "nodes:0-1,^2") means here.

    `host_cpus` (CPUs 0..n-1) and `nodes` default to this host. Adding a CPU or node the
    host lacks is an error (a typo, or a config from a bigger host); removing one is not,
    so "all,^7" works on small and big hosts alike. `doing` words the error: "Failed to
    <doing>: ...". Raises InvalidConfig.
    """
    host = host_cpu_set(host_cpus)
    topology = dict(nodes) if nodes is not None else host_nodes(host)
    try:
        terms = parse_terms(text)
    except ValueError as e:
        raise InvalidConfig(f"Failed to {doing}: {e}") from e
    cpus: set[int] = set()
    for remove, by_node, first, last in terms:
        if first is None:  # "all" (or "nodes:all"): every CPU of the host
            picked = set(host)
        elif by_node:
            numbers = set(range(first, last + 1))
            missing = numbers - topology.keys()
            if missing and not remove:
                raise InvalidConfig(
                    f"Failed to {doing}: NUMA node{'s' if len(missing) > 1 else ''} "
                    f"{ranges(missing)} {'do' if len(missing) > 1 else 'does'} not exist "
                    f"on this host (it has node{'s' if len(topology) > 1 else ''} "
                    f"{ranges(topology)})")
            picked = set[int]().union(*(topology[n] for n in numbers & topology.keys()))
        else:
            picked = set(range(first, last + 1))
            missing = picked - host
            if missing and not remove:
                raise InvalidConfig(
                    f"Failed to {doing}: CPU{'s' if len(missing) > 1 else ''} "
                    f"{ranges(missing)} {'do' if len(missing) > 1 else 'does'} not exist "
                    f"on this host (it has CPUs {ranges(host)})")
        cpus = cpus - picked if remove else cpus | picked
    if not cpus:
        raise InvalidConfig(f"Failed to {doing}: CPU list '{text}' selects no CPU on this "
                            f"host (it has CPUs {ranges(host)})")
    return cpus


def format_cpulist(cpus: Iterable[int], host_cpus: int | None = None) -> str:
    """xl's display form: "all" for every host CPU, "none" for none, else "0-3,5"."""
    chosen = set(cpus)
    if not chosen:
        return "none"
    if chosen == host_cpu_set(host_cpus):
        return "all"
    return ranges(chosen)


# -- threads -----------------------------------------------------------------------------
def set_thread_affinity(tid: int, cpus: set[int]) -> None:
    """Pin thread `tid` (of any process) to `cpus`. A cpuset the thread's cgroup imposes
    narrows this silently; get_thread_affinity() tells what the kernel applied."""
    doing = f"to pin thread {tid} to CPUs {ranges(cpus) or 'none'}"
    if not cpus:
        raise InvalidConfig(f"Failed {doing}: no CPU given")
    try:
        os.sched_setaffinity(tid, cpus)
    except ProcessLookupError as e:
        raise NotFound(f"Failed {doing}: no such thread") from e
    except OSError as e:
        if e.errno == errno.EINVAL:
            raise InvalidConfig(f"Failed {doing}: none of them can run it (offline, or "
                                "outside the cpuset of its cgroup)") from e
        raise BackendError(f"Failed {doing}: {e.strerror}") from e


def get_thread_affinity(tid: int) -> set[int]:
    """The CPUs thread `tid` may run on."""
    try:
        return set(os.sched_getaffinity(tid))
    except ProcessLookupError as e:
        raise NotFound(f"Failed to read the affinity of thread {tid}: no such thread") from e
    except OSError as e:
        raise BackendError(f"Failed to read the affinity of thread {tid}: {e.strerror}") from e
