"""The QMP side of a replicated volume on its primary host (QemuDriver's replica verbs).

The disk's node (drive-VDEV) is mirrored into the replica host's NBD export with an
active mirror: blockdev-mirror sync=full copy-mode=write-blocking. The job first copies
the whole disk (the initial sync, and a resync: the same operation), then stays READY
and, in write-blocking mode, completes a guest write only once the replica has it too.
Reads come from the local node. If the replica fails, the job ends with its error
(on-target-error=report) and the guest goes on with the local copy alone: the volume is
degraded. The job is never completed or pivoted: it runs as long as the domain.

Names: the TLS object repl-tls-VDEV, the NBD node and the job repl-VDEV.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xenia.errors import XeniaError
from xenia.qemu.commands import Qmp

EXPORT_NAME = "replica"  # storage/replicas.py's QSD export
# Gone jobs: how long detach() waits for a cancelled job to conclude.
CANCEL_TIMEOUT = 10.0


@dataclass(frozen=True)
class ReplicaLink:
    """Where the replica of one disk is served, and the PSK to reach it."""

    vdev: str
    host: str
    port: int
    tls_dir: Path
    identity: str


def job_id(vdev: str) -> str:
    return f"repl-{vdev}"


async def attach(qmp: Qmp, link: ReplicaLink) -> None:
    """Connect to the replica and start the active mirror; undoes itself on failure."""
    tls, node, job = f"repl-tls-{link.vdev}", job_id(link.vdev), job_id(link.vdev)
    await qmp.object_add("tls-creds-psk", tls, endpoint="client", dir=str(link.tls_dir),
                         username=link.identity)
    try:
        await qmp.blockdev_add({"driver": "nbd", "node-name": node, "export": EXPORT_NAME,
                                "server": {"type": "inet", "host": link.host,
                                           "port": str(link.port)},
                                "tls-creds": tls})
        try:
            # auto-dismiss off: a failed job stays (concluded) with its error to report.
            await qmp.blockdev_mirror(job, f"drive-{link.vdev}", node, sync="full",
                                      auto_dismiss=False, copy_mode="write-blocking",
                                      on_target_error="report")
        except XeniaError:
            with contextlib.suppress(XeniaError):
                await qmp.blockdev_del(node)
            raise
    except XeniaError:
        with contextlib.suppress(XeniaError):
            await qmp.object_del(tls)
        raise


async def status(qmp: Qmp) -> dict[str, dict[str, Any]]:
    """Each mirrored disk's state: {vdev: {"state": "syncing"|"in-sync"|"degraded",
    "progress": 0-100, "error": str|None}}. A disk without a job is not listed."""
    out: dict[str, dict[str, Any]] = {}
    for j in await qmp.query_block_jobs():
        dev = str(j.get("device", ""))
        if not dev.startswith("repl-"):
            continue
        total, done = int(j.get("len") or 0), int(j.get("offset") or 0)
        progress = 100.0 if total == 0 else round(100.0 * done / total, 1)
        if j.get("status") in ("concluded", "aborting", "null") or j.get("error"):
            state = "degraded"
        elif j.get("ready"):
            state = "in-sync"
        else:
            state = "syncing"
        out[dev[len("repl-"):]] = {"state": state, "progress": progress,
                                   "error": j.get("error")}
    return out


async def cut(qmp: Qmp, vdev: str) -> None:
    """Drop the connection to a replica that went silent: the write waiting on it fails
    on the target side only, the job ends with that error (on-target-error=report), and
    the guest's write completes on the local copy. Without this, a host that died without
    a word (power loss, a cut link: no TCP reset) holds every guest write until TCP gives
    up retransmitting, about 15 minutes with Linux's defaults (tcp_retries2 = 15)."""
    await qmp.yank_block_node(job_id(vdev))


async def detach(qmp: Qmp, vdev: str) -> None:
    """End the mirror of `vdev` (the replica keeps what it has) and drop its node and
    TLS object; harmless where there is none. The ordering matters: the node can only
    be deleted once no job uses it."""
    job = job_id(vdev)
    with contextlib.suppress(XeniaError):
        await qmp.block_job_cancel(job, force=True)
    deadline = time.monotonic() + CANCEL_TIMEOUT
    while time.monotonic() < deadline:
        jobs = {str(j.get("device")): j for j in await qmp.query_block_jobs()}
        if job not in jobs:
            break
        if jobs[job].get("status") == "concluded":
            with contextlib.suppress(XeniaError):
                await qmp.job_dismiss(job)
            break
        await asyncio.sleep(0.05)
    with contextlib.suppress(XeniaError):
        await qmp.blockdev_del(job)
    with contextlib.suppress(XeniaError):
        await qmp.object_del(f"repl-tls-{vdev}")
