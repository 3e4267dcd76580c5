"""History: the last hour of every domain's and the host's counters, for the UI's graphs.

xeniad samples DomainViews.stats() (what `xenia top` and /metrics read) every `interval`
seconds into a ring buffer of `keep` samples; a graph is rates between neighbouring
samples (CPU %, KiB/s), computed when asked. Only what a graph needs is kept of each row,
so an hour of 50 domains at 5 s is about 720 x 50 small tuples (a few MiB). Nothing is
written to disk: after a restart the graphs start again, as xentop's would.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Protocol

from xenia.hostos import hostinfo

log = logging.getLogger(__name__)

INTERVAL_ENV = "XENIA_HISTORY_INTERVAL"
DEFAULT_INTERVAL = 5.0
WINDOW = 3600.0  # the last hour


@dataclass(frozen=True)
class Point:
    cpu_time: float
    memory_kib: int
    rx: int
    tx: int
    rd: int
    wr: int


class _Stats(Protocol):
    async def stats(self) -> list[dict[str, Any]]: ...


def _point(row: dict[str, Any]) -> Point:
    return Point(float(row.get("cpu_time", 0.0)), int(row.get("memory_kib", 0)),
                 int(row.get("net_rx_bytes", 0)), int(row.get("net_tx_bytes", 0)),
                 int(row.get("vbd_rd_bytes", 0)), int(row.get("vbd_wr_bytes", 0)))


def interval_from_env() -> float:
    try:
        return max(0.2, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


class History:
    HOST = ""  # the host's key in a sample

    def __init__(self, views: _Stats, interval: float | None = None) -> None:
        self.views = views
        self.interval = interval if interval is not None else interval_from_env()
        keep = int(WINDOW / self.interval) + 1
        # (time, {uuid: Point, HOST: the host's Point}): one entry a sample.
        self.samples: collections.deque[tuple[float, dict[str, Point]]] = collections.deque(
            maxlen=keep)

    async def sample(self) -> None:
        rows = await self.views.stats()
        now = time.time()
        points: dict[str, Point] = {}
        rx = tx = rd = wr = 0
        for row in rows:
            if row.get("domid") == 0:
                continue
            p = points[str(row.get("uuid"))] = _point(row)
            rx, tx, rd, wr = rx + p.rx, tx + p.tx, rd + p.rd, wr + p.wr
        mem = hostinfo.meminfo()
        used = mem.get("MemTotal", 0) - mem.get("MemAvailable", mem.get("MemFree", 0))
        points[self.HOST] = Point(hostinfo.host_cpu_seconds(), used, rx, tx, rd, wr)
        self.samples.append((now, points))

    async def run(self) -> None:
        """Sample until cancelled; a failed sample is logged and the next one tried."""
        while True:
            try:
                await self.sample()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("history sample failed")
            await asyncio.sleep(self.interval)

    def series(self, key: str) -> dict[str, list[float]]:
        """The graphs of `key` (a domain's uuid, or HOST): times (s since the epoch) and,
        between each sample and the one before it, CPU % of one host CPU, memory MiB,
        network and disk KiB/s. A domain missing from a sample (not yet created, or
        restarted: its counters went back) breaks its line there."""
        out: dict[str, list[float]] = {k: [] for k in (
            "t", "cpu", "memory_mib", "net_rx_kibs", "net_tx_kibs", "disk_rd_kibs",
            "disk_wr_kibs")}
        prev: tuple[float, Point] | None = None
        for t, points in self.samples:
            p = points.get(key)
            if p is None:
                prev = None
                continue
            if prev is not None and t > prev[0] and p.cpu_time >= prev[1].cpu_time:
                dt, q = t - prev[0], prev[1]
                out["t"].append(t)
                out["cpu"].append(round((p.cpu_time - q.cpu_time) / dt * 100, 2))
                out["memory_mib"].append(round(p.memory_kib / 1024, 1))
                for name, now, then in (("net_rx_kibs", p.rx, q.rx), ("net_tx_kibs", p.tx, q.tx),
                                        ("disk_rd_kibs", p.rd, q.rd),
                                        ("disk_wr_kibs", p.wr, q.wr)):
                    out[name].append(round(max(0, now - then) / 1024 / dt, 1))
            prev = (t, p)
        return out
