"""Facts about the host: CPUs and their flags, memory, CPU time (Domain-0's row in `xenia list`)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def meminfo() -> dict[str, int]:
    """/proc/meminfo in KiB."""
    out: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            out[key] = int(parts[0])
    return out


def total_mib() -> int:
    return meminfo()["MemTotal"] // 1024


def available_mib() -> int:
    m = meminfo()
    return m.get("MemAvailable", m["MemFree"]) // 1024


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU feature flags (vmx, svm, avx2, ...) of the host's first CPU."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_count() -> int:
    return os.cpu_count() or 1


def host_cpu_seconds() -> float:
    """CPU time the host spent outside idle since boot (Domain-0's Time(s))."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    user, nice, system = (int(x) for x in first[1:4])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime"):
            return float(line.split()[1])
    return 0.0


def describe() -> dict[str, object]:
    uname = platform.uname()
    return {
        "host": uname.node,
        "release": uname.release,
        "machine": uname.machine,
        "nr_cpus": cpu_count(),
        "total_memory": total_mib(),
        "free_memory": available_mib(),
        **topology(),
    }


def topology(sysfs: Path = Path("/sys/devices/system")) -> dict[str, object]:
    """The keys of `xl info` that Xen's scripts read about the CPUs and nodes."""
    cpus = sorted(sysfs.glob("cpu/cpu[0-9]*/topology"))
    sockets: dict[str, set[str]] = {}
    threads: dict[tuple[str, str], int] = {}
    for topo in cpus:
        try:
            pkg = (topo / "physical_package_id").read_text().strip()
            core = (topo / "core_id").read_text().strip()
        except OSError:
            continue
        sockets.setdefault(pkg, set()).add(core)
        threads[(pkg, core)] = threads.get((pkg, core), 0) + 1
    nodes = len(list(sysfs.glob("node/node[0-9]*"))) or 1
    mhz = 0
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            mhz = int(float(line.split(":")[1]))
            break
    return {
        "max_cpu_id": max(cpu_count() - 1, 0),
        "nr_nodes": nodes,
        "cores_per_socket": max((len(c) for c in sockets.values()), default=1),
        "threads_per_core": max(threads.values(), default=1),
        "cpu_mhz": mhz,
    }
