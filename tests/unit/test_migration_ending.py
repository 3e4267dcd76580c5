"""Error paths of a migration's end (cancel, non-convergence), with QEMU and the manager
scripted.

QEMU's migrate_cancel returns while the migration is still "cancelling" (about 0.1 s with
TLS here); until it is "cancelled" QEMU refuses a new migration or any capability change.
The real thing is exercised by tests/integration/test_migration.py::test_ctrl_c_and_cancel.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from xenia.config.model import DomainConfig
from xenia.drivers import qemu_migrate
from xenia.drivers.base import MigrationOptions
from xenia.errors import BackendError, InvalidConfig
from xenia.migration.receiver import Receiver
from xenia.migration.sender import MigrationJob
from xenia.qemu import stream
from xenia.qemu.commands import Qmp
from xenia.store.base import DomainRecord


class ScriptedQemu:
    """Answers query-migrate with the given statuses in turn (the last one repeats)."""

    def __init__(self, *statuses: str) -> None:
        self.statuses = list(statuses)
        self.commands: list[str] = []

    async def command(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        self.commands.append(cmd)
        if cmd == "query-migrate":
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            return {"status": status}
        return {}


def test_cancel_waits_until_qemu_has_cancelled() -> None:
    qemu = ScriptedQemu("cancelling", "cancelling", "cancelled")
    assert asyncio.run(stream.cancel(Qmp(qemu))) == "cancelled"  # type: ignore[arg-type]
    assert qemu.commands == ["migrate_cancel"] + ["query-migrate"] * 3


def test_cancel_that_never_settles_says_so() -> None:
    qemu = ScriptedQemu("cancelling")
    with pytest.raises(BackendError, match="still 'cancelling' a migration after 0 s"):
        asyncio.run(stream.cancel(Qmp(qemu), timeout=0.2))  # type: ignore[arg-type]


def test_nothing_under_way_is_settled_at_once() -> None:
    for status in stream.SETTLED:
        qemu = ScriptedQemu(status)
        assert asyncio.run(stream.wait_settled(Qmp(qemu))) == status  # type: ignore[arg-type]
        assert qemu.commands == ["query-migrate"]


class HangingBuild:
    """A manager whose build never finishes (QEMU waiting for the stream)."""

    paths = None

    def __init__(self) -> None:
        self.building = asyncio.Event()

    async def build(self, rec: DomainRecord, **kw: Any) -> DomainRecord:
        self.building.set()
        await asyncio.sleep(3600)
        return rec


JOB = "0e8c7a52-35a4-4c8e-9a53-2f4d1b1f7a10"


def test_prepare_aborted_by_the_source_answers_with_an_error() -> None:
    """The abort cancels the build; the prepare call must answer with an error that says
    so, not let a CancelledError escape into the web server."""
    cfg = DomainConfig.from_dict({"name": "x", "type": "pv", "kernel": "/k"})
    record = DomainRecord(uuid="6b1f6c57-0000-4000-8000-000000000001", name="x", domid=3,
                          config=cfg, state="running").to_dict()

    async def main() -> None:
        m = HangingBuild()
        r = Receiver(m, network=None)  # type: ignore[arg-type]
        r.check = lambda *a: []  # type: ignore[method-assign]
        r.allow_plain = True
        prep = asyncio.create_task(r.prepare({"id": JOB, "record": record,
                                              "listen_host": "127.0.0.1"}))
        await asyncio.wait_for(m.building.wait(), 5)
        await r.abort(JOB)
        with pytest.raises(InvalidConfig, match="Failed to prepare the migration of 'x': "
                                                "the source aborted it"):
            await asyncio.wait_for(prep, 5)
        assert r.jobs[JOB].state == "aborted"

    asyncio.run(main())


# -- --auto-converge: the downtime limit is raised once throttling is exhausted -------------
class ThrottledGuest:
    """A source QEMU whose guest, throttled to 99%, still leaves 2 MiB each pass: it
    converges only once the downtime limit lets 2 MiB go in the switch-over."""

    def __init__(self, converges_at_ms: int) -> None:
        self.converges_at_ms = converges_at_ms
        self.limits: list[int] = []
        self.bandwidths: list[int] = []
        self.passes = 0

    async def command(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        args = args or {}
        if cmd == "migrate-set-parameters" and "downtime-limit" in args:
            self.limits.append(int(args["downtime-limit"]))
        if cmd == "migrate-set-parameters" and "max-bandwidth" in args:
            self.bandwidths.append(int(args["max-bandwidth"]))
        if cmd != "query-migrate":
            return {}
        self.passes += 1
        done = bool(self.limits) and self.limits[-1] >= self.converges_at_ms
        return {"status": "completed" if done else "active", "downtime": 90,
                "total-time": 1000, "cpu-throttle-percentage": 99,
                "ram": {"dirty-sync-count": self.passes, "transferred": self.passes << 20,
                        "remaining": 2 << 20, "total": 256 << 20, "dirty-pages-rate": 900}}


def precopy(qemu: ThrottledGuest, opts: MigrationOptions) -> MigrationJob:
    job = MigrationJob(id="j1", domain="d", uuid="u1", options=opts)
    asyncio.run(qemu_migrate.precopy(Qmp(qemu), job, opts, "tcp:h:1", ""))  # type: ignore[arg-type]
    return job


def test_auto_converge_raises_the_default_downtime_until_it_converges() -> None:
    qemu = ThrottledGuest(converges_at_ms=240)
    job = precopy(qemu, MigrationOptions(host="h", auto_converge=True))
    assert qemu.limits == [30, 60, 120, 240]  # the default, then doubled
    assert job.downtime_limit_ms == 240 and job.downtime_ms == 90


def test_auto_converge_keeps_an_explicit_downtime_and_gives_up() -> None:
    qemu = ThrottledGuest(converges_at_ms=10**6)
    with pytest.raises(BackendError, match="does not converge even with its vCPUs throttled "
                                           "to 99% and a downtime limit of 50 ms"):
        precopy(qemu, MigrationOptions(host="h", auto_converge=True, downtime_ms=50))
    assert qemu.limits == [50]


def test_each_migration_sets_its_bandwidth_cap() -> None:
    # QEMU keeps max-bandwidth from the last migration (a cancelled --bandwidth 1, a
    # save's unlimited file rate): one without --bandwidth must put QEMU's default back.
    qemu = ThrottledGuest(converges_at_ms=30)
    precopy(qemu, MigrationOptions(host="h", bandwidth_mibs=1))
    precopy(qemu, MigrationOptions(host="h"))
    assert qemu.bandwidths == [1 << 20, qemu_migrate.QEMU_BANDWIDTH]
    assert qemu_migrate.QEMU_BANDWIDTH == 128 << 20


def test_auto_converge_stops_raising_at_the_cap() -> None:
    qemu = ThrottledGuest(converges_at_ms=10**6)
    with pytest.raises(BackendError, match="downtime limit of 1000 ms"):
        precopy(qemu, MigrationOptions(host="h", auto_converge=True))
    assert qemu.limits == [30, 60, 120, 240, 480, 960, 1000]
