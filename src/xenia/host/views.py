"""DomainViews: what `xenia list`, `info`, `top` and `host info` show of this host.

Read-only: it looks at the store and the DomainManager's instances, and changes nothing.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from typing import Any

from xenia.errors import XeniaError
from xenia.host.manager import DOM0_NAME, DomainManager, pooled
from xenia.hostos import hostinfo
from xenia.store.base import DomainRecord
from xenia.store.state import CRASHED, DYING, PAUSED, RUNNING, SHUTDOWN, DomainState

log = logging.getLogger(__name__)

# xl's six state columns: running, blocked, paused, shutdown, crashed, dying.
STATE_COLUMNS = "rbpscd"
# What list, info and top call a running domain whose guest sleeps in S3 (xl suspend).
# Not a DomainState: the store keeps it running (its QEMU runs, every live verb applies);
# xl(1) says a suspended domain "is in a shutdown state, but not dying": its s column.
SUSPENDED = "suspended"


def _peer(inst: Any) -> list[int | None] | None:
    peer = inst.console_peer() if inst is not None else None
    return None if peer is None else [peer.uid, peer.pid]


def shown_state(state: DomainState, suspended: bool) -> str:
    return SUSPENDED if state == RUNNING and suspended else str(state)


def state_letters(state: DomainState, running_now: bool, suspended: bool = False) -> str:
    if state == RUNNING and suspended:
        return "--s---"
    letter = {
        RUNNING: "r" if running_now else "b",
        PAUSED: "p",
        SHUTDOWN: "s",
        CRASHED: "c",
        DYING: "d",
    }.get(state)
    if letter is None:
        return "-" * 6
    return "".join(c if c == letter else "-" for c in STATE_COLUMNS)


class DomainViews:
    def __init__(self, manager: DomainManager) -> None:
        self.m = manager

    def describe(self, rec: DomainRecord) -> dict[str, Any]:
        inst = self.m.instance_of(rec.uuid)
        alive = inst is not None and inst.alive
        running_now = inst.running_now() if inst is not None and alive else False
        suspended = inst.suspended if inst is not None and alive else False
        return {
            "name": rec.name,
            "domid": rec.domid,
            "uuid": rec.uuid,
            "type": rec.config.type,
            "memory": rec.config.memory,
            "maxmem": rec.config.effective_maxmem,
            "vcpus": rec.config.vcpus,
            "state": shown_state(rec.state, suspended),
            "state_letters": state_letters(rec.state, running_now, suspended),
            "cpu_time": inst.cpu_seconds() if inst is not None else 0.0,
            "created_at": rec.created_at,
            "started_at": rec.started_at,
            "uptime": time.time() - rec.started_at if rec.started_at else 0.0,
            "console": str(inst.console_path()) if inst is not None else None,
            "console_log": str(inst.console_log()) if inst is not None else None,
            # [uid, pid] the console's listener must have (the CLI connects by path).
            "console_peer": _peer(inst),
            "runtime": rec.runtime,
            "config": rec.config.to_dict(),
        }

    def dom0(self) -> dict[str, Any]:
        return {
            "name": DOM0_NAME,
            "domid": 0,
            "uuid": "00000000-0000-0000-0000-000000000000",
            "type": "host",
            "memory": hostinfo.total_mib(),
            "maxmem": hostinfo.total_mib(),
            "vcpus": hostinfo.cpu_count(),
            "state": RUNNING,
            "state_letters": "r-----",
            "cpu_time": hostinfo.host_cpu_seconds(),
            "started_at": hostinfo.boot_time(),
            "uptime": time.time() - hostinfo.boot_time(),
        }

    def list(self) -> list[dict[str, Any]]:
        return [self.dom0()] + [self.describe(r) for r in self.m.store.list()
                                if not pooled(r)]

    def host_info(self) -> dict[str, Any]:
        """`xenia info`: the host's facts, QEMU and the accelerator, the domain count."""
        out: dict[str, Any] = dict(hostinfo.describe())
        drv = self.m.drivers.get("pv")
        if drv is not None:
            out.update(drv.host_info())
        out["domains"] = sum(not pooled(r) for r in self.m.store.list())
        out["xenia_root"] = str(self.m.paths.state.parent)
        return out

    async def _stats_row(self, rec: DomainRecord, now: float, host_kib: int
                         ) -> dict[str, Any]:
        inst = self.m.instance_of(rec.uuid)
        alive = inst is not None and inst.alive
        # Not describe(rec): that also serializes the config and reads the CPU time again.
        suspended = inst.suspended if inst is not None and alive else False
        letters = state_letters(rec.state, inst.running_now() if inst and alive else False,
                                suspended)
        row: dict[str, Any] = {
            "name": rec.name, "uuid": rec.uuid, "domid": rec.domid,
            "state": shown_state(rec.state, suspended),
            "type": rec.config.type, "state_letters": letters,
            "maxmem_kib": rec.config.effective_maxmem * 1024, "host_memory_kib": host_kib,
            "timestamp": now, "cpu_time": 0.0, "vcpus": rec.config.vcpus,
            "memory_kib": rec.config.memory * 1024, "nets": 0, "net_rx_bytes": 0,
            "net_tx_bytes": 0, "vbds": 0, "vbd_rd_ops": 0, "vbd_wr_ops": 0,
            "vbd_rd_bytes": 0, "vbd_wr_bytes": 0,
        }
        if inst is not None and alive:
            try:
                row.update(await inst.stats(rec))
            except XeniaError as e:
                log.debug("stats of %s: %s", rec.name, e)
        return row

    async def stats(self) -> builtins.list[dict[str, Any]]:
        """Counters of every domain for `xenia top` (Domain-0 first)."""
        now = time.time()
        host_kib = hostinfo.total_mib() * 1024
        d0 = self.dom0()
        rows: builtins.list[dict[str, Any]] = [{
            "name": d0["name"], "domid": 0, "type": "host", "state_letters": "r-----",
            "cpu_time": d0["cpu_time"], "vcpus": d0["vcpus"], "memory_kib": host_kib,
            "maxmem_kib": host_kib, "host_memory_kib": host_kib, "nets": 0,
            "net_rx_bytes": 0, "net_tx_bytes": 0, "vbds": 0, "vbd_rd_ops": 0,
            "vbd_wr_ops": 0, "vbd_rd_bytes": 0, "vbd_wr_bytes": 0, "timestamp": now,
        }]
        # Concurrently: each live domain costs QMP round trips and a netlink read, and a
        # /metrics scrape of 50 domains must answer within 100 ms (bench/metrics.py).
        rows += await asyncio.gather(*(self._stats_row(rec, now, host_kib)
                                       for rec in self.m.store.list()
                                       if not pooled(rec)))
        return rows
