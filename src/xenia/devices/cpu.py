"""vCPUs as QEMU CPU devices, so every vCPU but the first can be hot-added and removed.

The machine is started with `-smp 1,maxcpus=N` (one socket per vCPU) and vCPUs 1..vcpus-1
are `-device`s on the command line: cold-plugged, yet unpluggable by `vcpu-set`, and a
migration destination builds exactly the same set from the same argv.
"""

from __future__ import annotations

from typing import Any


def cpu_driver(accel: str) -> str:
    return "host-x86_64-cpu" if accel == "kvm" else "qemu64-x86_64-cpu"


def qdev_id(index: int) -> str:
    return f"vcpu{index}"


def device(index: int, accel: str) -> dict[str, Any]:
    return {"driver": cpu_driver(accel), "id": qdev_id(index), "socket-id": index,
            "core-id": 0, "thread-id": 0}


def smp(maxvcpus: int) -> str:
    return f"cpus=1,sockets={maxvcpus},cores=1,threads=1,maxcpus={maxvcpus}"
