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
    }
