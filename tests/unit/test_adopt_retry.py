"""Issue 10 §4: a running domain whose QMP does not answer at adoption is kept and
adopted later, never forgotten (host/manager.py, drivers/qemu.py)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from xenia.config.model import DomainConfig
from xenia.drivers.base import GuestEvents, Instance
from xenia.errors import AdoptLater, BackendError
from xenia.host import manager as manager_mod
from xenia.host.manager import DomainManager
from xenia.paths import Paths
from xenia.store.base import DomainRecord
from xenia.store.sqlite import SqliteStore
from xenia.store.state import RUNNING

UUID = "3f0b2c9e-8d6a-4f51-9b0e-6a1d2c3b4a59"


class StalledThenFine:
    """A driver whose QMP stalls for the first `stalls` adoptions."""

    types = ("pv",)

    def __init__(self, stalls: int) -> None:
        self.stalls = stalls
        self.tries = 0
        self.released: list[str] = []

    async def adopt(self, record: DomainRecord, events: GuestEvents) -> Instance | None:
        self.tries += 1
        if self.tries <= self.stalls:
            raise AdoptLater(f"Failed to adopt '{record.name}': QMP timed out")
        return FakeInstance()  # type: ignore[return-value]

    def release(self, record: DomainRecord) -> None:
        self.released.append(record.uuid)


class FakeInstance:
    alive = True

    async def run_state(self) -> str:
        return "running"


def make(tmp_path: Path, drv: Any) -> tuple[DomainManager, SqliteStore]:
    paths = Paths.from_env(str(tmp_path))
    paths.ensure()
    store = SqliteStore(paths.db)
    cfg = DomainConfig.from_dict({"name": "stuck", "type": "pv", "kernel": "/k"})
    store.put(DomainRecord(uuid=UUID, name="stuck", domid=7, config=cfg, state=RUNNING))
    return DomainManager(paths, store, [drv]), store


def test_stalled_qmp_keeps_the_record_and_adopts_later(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_mod, "ADOPT_RETRY", (0.01, 0.01, 0.01))
    drv = StalledThenFine(stalls=3)
    m, store = make(tmp_path, drv)

    async def main() -> None:
        await m.adopt_all()
        # Not adopted yet, and not forgotten: its record and host side stay.
        rec = store.get(UUID)
        assert rec is not None and drv.released == []
        assert m.adopting(UUID)
        with pytest.raises(BackendError, match="could not take it over yet"):
            m.instance(rec)
        for _ in range(200):
            if not m.adopting(UUID):
                break
            await asyncio.sleep(0.01)
        assert drv.tries == 4
        assert isinstance(m.instance(rec), FakeInstance)
        await m.detach_all()

    asyncio.run(main())
    assert store.get(UUID) is not None and drv.released == []


def test_retries_go_on_past_the_schedule(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_mod, "ADOPT_RETRY", (0.01, 0.01))
    drv = StalledThenFine(stalls=6)
    m, store = make(tmp_path, drv)

    async def main() -> None:
        await m.adopt_all()
        for _ in range(300):
            if not m.adopting(UUID):
                break
            await asyncio.sleep(0.01)
        assert drv.tries == 7
        await m.detach_all()

    asyncio.run(main())
    assert store.get(UUID) is not None


def test_detach_all_stops_the_retries(tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_mod, "ADOPT_RETRY", (5.0,))
    drv = StalledThenFine(stalls=100)
    m, store = make(tmp_path, drv)

    async def main() -> None:
        await m.adopt_all()
        assert m.adopting(UUID)
        await m.detach_all()
        assert not m.adopting(UUID)

    asyncio.run(main())
    assert store.get(UUID) is not None and drv.released == []


# -- the driver's half: a QEMU that runs but whose QMP never greets ---------------------
def test_qemu_driver_says_adopt_later_while_its_qemu_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """QemuDriver.adopt raises AdoptLater (keep the record, retry), not None (forget it),
    while a process with the domain's -uuid runs and its QMP socket takes the connection
    but never greets; None once that process is gone."""
    from xenia.drivers.qemu import QemuDriver
    from xenia.hostos.procfs import cmdline
    from xenia.network.manager import NetworkManager
    from xenia.qemu.qmp import QMPSession
    from xenia.storage.manager import StorageManager

    real_connect = QMPSession.connect

    async def quick(self: QMPSession, on_event: Any = None, timeout: float = 10.0) -> None:
        await real_connect(self, on_event, timeout=0.5)

    monkeypatch.setattr(QMPSession, "connect", quick)
    # A short root: a UNIX socket's path has at most 107 bytes (tmp_path is longer).
    root = Path(tempfile.mkdtemp(prefix="xa-", dir="/tmp"))
    paths = Paths.from_env(str(root))
    paths.ensure()
    store = SqliteStore(paths.db)
    drv = QemuDriver(paths, store, StorageManager(paths, store), NetworkManager(paths, store))
    files = drv.files(UUID)
    files.dir.mkdir(parents=True)
    qmp = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    qmp.bind(str(files.qmp))
    qmp.listen(4)  # the kernel takes the connection; no greeting ever comes
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                 "-uuid", UUID])
    try:
        files.pidfile.write_text(f"{stand_in.pid}\n")
        cfg = DomainConfig.from_dict({"name": "stuck", "type": "pv", "kernel": "/k"})
        rec = DomainRecord(uuid=UUID, name="stuck", domid=7, config=cfg, state=RUNNING)

        async def events(name: str, data: dict[str, Any]) -> None:
            pass

        # Popen returns once the child is in execve, before the kernel set up its new
        # argv: /proc/PID/cmdline reads empty for a moment.
        deadline = time.monotonic() + 10
        while "-uuid" not in cmdline(stand_in.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(AdoptLater, match="runs but its QMP fails"):
            asyncio.run(drv.adopt(rec, events))
        stand_in.kill()
        stand_in.wait()
        assert asyncio.run(drv.adopt(rec, events)) is None
    finally:
        stand_in.kill()
        stand_in.wait()
        qmp.close()
        shutil.rmtree(root, ignore_errors=True)
