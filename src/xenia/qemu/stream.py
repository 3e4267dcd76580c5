"""QEMU's migration stream over QMP: progress, waiting for its end, cancel.

Used by the QEMU driver's save (to a file), restore (from a file) and live migration
(over TCP/TLS): drivers/qemu_migrate.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xenia.errors import BackendError
from xenia.qemu.commands import Qmp

DONE = ("completed",)
FAILED = ("failed", "cancelled")
# States in which QEMU has no migration under way: a new one (or set_caps) may start.
SETTLED = ("none", "completed", "failed", "cancelled")
# How long a cancelled migration may take to wind down ("cancelling" -> "cancelled").
# With TLS that takes about 0.1 s here; until then QEMU refuses a new migration and
# any capability change ("There's a migration process in progress").
SETTLE_TIMEOUT = 30.0


@dataclass
class Progress:
    status: str
    passes: int = 0
    transferred: int = 0
    remaining: int = 0
    total: int = 0
    dirty_rate: int = 0  # pages/s
    throttle: int = 0  # auto-converge CPU throttle %
    downtime_ms: int | None = None
    total_ms: int | None = None
    setup_ms: int | None = None

    @classmethod
    def from_qmp(cls, info: dict[str, Any]) -> Progress:
        ram = info.get("ram", {})
        return cls(
            status=str(info.get("status", "none")),
            passes=int(ram.get("dirty-sync-count", 0)),
            transferred=int(ram.get("transferred", 0)),
            remaining=int(ram.get("remaining", 0)),
            total=int(ram.get("total", 0)),
            dirty_rate=int(ram.get("dirty-pages-rate", 0)),
            throttle=int(info.get("cpu-throttle-percentage", 0)),
            downtime_ms=info.get("downtime"),
            total_ms=info.get("total-time"),
            setup_ms=info.get("setup-time"),
        )


async def wait(qmp: Qmp, *, on_progress: Callable[[Progress], None] | None = None,
               interval: float = 0.1, timeout: float | None = None,
               what: str = "migration") -> Progress:
    """Poll query-migrate until the migration ends; raise BackendError if it failed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        info = await qmp.query_migrate()
        prog = Progress.from_qmp(info)
        if on_progress is not None:
            on_progress(prog)
        if prog.status in DONE:
            return prog
        if prog.status in FAILED:
            why = info.get("error-desc") or prog.status
            raise BackendError(f"Failed {what}: {why}")
        if deadline is not None and time.monotonic() > deadline:
            raise BackendError(f"Failed {what}: it did not finish in {timeout:.0f} s")
        await asyncio.sleep(interval)


async def wait_incoming(qmp: Qmp, alive: Callable[[], bool], timeout: float | None = None,
                        what: str = "restore", connect_timeout: float | None = None,
                        interval: float = 0.05) -> None:
    """On the receiving QEMU: until the incoming migration completed (or failed).

    `alive` tells whether QEMU still runs; `connect_timeout`: give up if no sender has
    connected by then (status still "setup").
    """
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    while True:
        info = await qmp.query_migrate()
        status = info.get("status")
        if (connect_timeout is not None and status == "setup"
                and time.monotonic() - start > connect_timeout):
            raise BackendError(f"Failed {what}: the sender did not connect within "
                               f"{connect_timeout:.0f} s")
        if status == "completed":
            return
        if status in FAILED:
            raise BackendError(f"Failed {what}: {info.get('error-desc') or status}")
        if not alive():
            raise BackendError(f"Failed {what}: QEMU exited while receiving the state")
        if deadline is not None and time.monotonic() > deadline:
            raise BackendError(f"Failed {what}: no complete state in {timeout:.0f} s")
        await asyncio.sleep(interval)


async def wait_settled(qmp: Qmp, timeout: float = SETTLE_TIMEOUT) -> str:
    """Until QEMU has no migration under way; returns its final state.

    Raises BackendError if one is still going (say "cancelling") after `timeout`.
    """
    deadline = time.monotonic() + timeout
    while True:
        status = str((await qmp.query_migrate()).get("status", "none"))
        if status in SETTLED:
            return status
        if time.monotonic() > deadline:
            raise BackendError(f"QEMU is still '{status}' a migration after {timeout:.0f} s")
        await asyncio.sleep(0.05)


async def cancel(qmp: Qmp, timeout: float = SETTLE_TIMEOUT) -> str:
    """migrate_cancel, then wait until QEMU has wound the migration down.

    QEMU's migrate_cancel returns at once with the migration still "cancelling"; whoever
    acts next (resume the guest, retry the migration) must wait for a settled state.
    """
    await qmp.migrate_cancel()
    return await wait_settled(qmp, timeout)
