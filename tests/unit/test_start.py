"""`xenia start` (DomainManager.start): a preserved domain boots again from its stored
config; every other state is refused naming it, and a failed boot leaves the domain
preserved. The driver is a fake here (the states and error paths); the real guest
powered off and started again: tests/integration/test_start.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from xenia.cli.base import LazyGroup
from xenia.cli.main import main  # noqa: F401 - fills the command registry
from xenia.config.model import DomainConfig
from xenia.drivers.base import GuestEvents
from xenia.errors import BackendError, InUse
from xenia.host.manager import DomainManager
from xenia.paths import Paths
from xenia.store.base import DomainRecord
from xenia.store.sqlite import SqliteStore
from xenia.store.state import CRASHED, PAUSED, RUNNING, SHUTDOWN, DomainState

UUID = "5d7c1a2b-3e4f-4a5b-8c6d-7e8f9a0b1c2d"


class FakeInstance:
    def __init__(self, n: int) -> None:
        self.n = n
        self.alive = True
        self.resumed = False

    async def run_state(self) -> str:
        return "shutdown"

    async def resume(self) -> None:
        self.resumed = True

    async def destroy(self) -> None:
        self.alive = False

    async def detach(self) -> None:
        pass


class FakeDriver:
    """Adopts the preserved domain's old process (instance 0); each start makes the next."""

    types = ("pv",)

    def __init__(self) -> None:
        self.old = FakeInstance(0)
        self.started: list[DomainRecord] = []
        self.released = 0
        self.fail: str | None = None
        self.gate: asyncio.Event | None = None

    async def adopt(self, record: DomainRecord, events: GuestEvents) -> Any:
        return self.old

    def release(self, record: DomainRecord) -> None:
        self.released += 1

    async def start(self, record: DomainRecord, events: GuestEvents,
                    incoming: str | None = None) -> Any:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise BackendError(self.fail)
        self.started.append(record)
        return FakeInstance(len(self.started))


def setup(tmp_path: Path, state: DomainState) -> tuple[DomainManager, SqliteStore, FakeDriver]:
    paths = Paths.from_env(str(tmp_path))
    paths.ensure()
    store = SqliteStore(paths.db)
    cfg = DomainConfig.from_dict({"name": "web", "type": "pv", "kernel": "/k",
                                  "on_poweroff": "preserve"})
    store.put(DomainRecord(uuid=UUID, name="web", domid=7, config=cfg, state=state))
    drv = FakeDriver()
    return DomainManager(paths, store, [drv]), store, drv  # type: ignore[list-item]


@pytest.mark.parametrize("state", [SHUTDOWN, CRASHED])
def test_start_boots_a_preserved_domain_again(tmp_path: Path, state: DomainState) -> None:
    m, store, drv = setup(tmp_path, state)

    async def run() -> None:
        await m.adopt_all()
        rec = await m.start("web")
        assert rec.state == RUNNING and rec.started_at
        # The same domain: its UUID, name and domid, from its stored config.
        assert [(r.uuid, r.name, r.domid) for r in drv.started] == [(UUID, "web", 7)]
        assert not drv.old.alive  # the preserved process went first (it holds the disks)
        assert drv.released == 1
        inst = m.instance(rec)
        assert isinstance(inst, FakeInstance) and inst.n == 1 and inst.resumed

    asyncio.run(run())
    got = store.get(UUID)
    assert got is not None and got.state == RUNNING


@pytest.mark.parametrize(("state", "words"), [
    (RUNNING, "it is running; only a domain kept after it stopped (shutdown or crashed)"),
    (PAUSED, "it is paused (`xenia unpause` runs it)")])
def test_start_refuses_a_live_domain_naming_its_state(tmp_path: Path, state: DomainState,
                                                      words: str) -> None:
    m, store, drv = setup(tmp_path, state)
    drv.old.run_state = lambda: _said(state)  # type: ignore[method-assign]

    async def run() -> None:
        await m.adopt_all()
        with pytest.raises(InUse) as e:
            await m.start("web")
        assert e.value.message.startswith("Failed to start domain 'web': ")
        assert words in e.value.message
        assert e.value.http_status == 409

    asyncio.run(run())
    assert drv.started == [] and drv.old.alive and drv.released == 0
    got = store.get(UUID)
    assert got is not None and got.state == state


async def _said(state: DomainState) -> str:
    return str(state)


def test_a_second_start_while_booting_is_refused(tmp_path: Path) -> None:
    m, _, drv = setup(tmp_path, SHUTDOWN)

    async def run() -> None:
        drv.gate = asyncio.Event()
        await m.adopt_all()
        first = asyncio.create_task(m.start("web"))
        while not m.locked(UUID).locked():  # the first is under way, held in the driver
            await asyncio.sleep(0.001)
        with pytest.raises(InUse, match="'web': it is starting already"):
            await m.start("web")
        drv.gate.set()
        assert (await first).state == RUNNING
        # Once it runs, a start is refused for that.
        with pytest.raises(InUse, match="it is running"):
            await m.start("web")

    asyncio.run(run())
    assert len(drv.started) == 1


def test_a_failed_start_leaves_it_preserved(tmp_path: Path) -> None:
    m, store, drv = setup(tmp_path, SHUTDOWN)
    drv.fail = "Failed to start domain 'web': QEMU said no"

    async def run() -> None:
        await m.adopt_all()
        with pytest.raises(BackendError, match="QEMU said no"):
            await m.start("web")
        got = store.get(UUID)
        assert got is not None and got.state == SHUTDOWN  # kept: start again or destroy
        with pytest.raises(BackendError, match="its process is not running"):
            m.instance(got)
        drv.fail = None
        assert (await m.start("web")).state == RUNNING

    asyncio.run(run())
    assert len(drv.started) == 1


def test_start_is_a_command_and_its_abbreviation() -> None:
    assert LazyGroup.resolve_abbreviation("start") == "start"
    assert LazyGroup.resolve_abbreviation("sta") == "start"


def test_dry_run_start_sends_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from xenia.cli.base import cli
    from xenia.cli.client import DryRun

    monkeypatch.setenv("XENIA_ROOT", str(tmp_path))  # no daemon there: nothing could answer
    res = CliRunner().invoke(cli, ["-N", "start", "web"])
    assert isinstance(res.exception, DryRun)
    assert "dry run: would POST /v1/domains/web/start" in res.stderr
