"""Error paths around a cancelled migration, with QEMU and the manager scripted.

QEMU's migrate_cancel returns while the migration is still "cancelling" (about 0.1 s with
TLS here); until it is "cancelled" QEMU refuses a new migration or any capability change.
The real thing is exercised by tests/integration/test_migration.py::test_ctrl_c_and_cancel.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from xenia.config.model import DomainConfig
from xenia.errors import BackendError, InvalidConfig
from xenia.migration import stream
from xenia.migration.receiver import Receiver
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
    assert asyncio.run(stream.cancel(qemu)) == "cancelled"  # type: ignore[arg-type]
    assert qemu.commands == ["migrate_cancel"] + ["query-migrate"] * 3


def test_cancel_that_never_settles_says_so() -> None:
    qemu = ScriptedQemu("cancelling")
    with pytest.raises(BackendError, match="still 'cancelling' a migration after 0 s"):
        asyncio.run(stream.cancel(qemu, timeout=0.2))  # type: ignore[arg-type]


def test_nothing_under_way_is_settled_at_once() -> None:
    for status in stream.SETTLED:
        qemu = ScriptedQemu(status)
        assert asyncio.run(stream.wait_settled(qemu)) == status  # type: ignore[arg-type]
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


def test_prepare_aborted_by_the_source_answers_with_an_error() -> None:
    """The abort cancels the build; the prepare call must answer with an error that says
    so, not let a CancelledError escape into the web server."""
    cfg = DomainConfig.from_dict({"name": "x", "type": "pv", "kernel": "/k"})
    record = DomainRecord(uuid="6b1f6c57-0000-4000-8000-000000000001", name="x", domid=3,
                          config=cfg, state="running").to_dict()

    async def main() -> None:
        m = HangingBuild()
        r = Receiver(m)  # type: ignore[arg-type]
        r.check = lambda *a: []  # type: ignore[method-assign]
        prep = asyncio.create_task(r.prepare({"id": "j1", "record": record,
                                              "listen_host": "127.0.0.1"}))
        await asyncio.wait_for(m.building.wait(), 5)
        await r.abort("j1")
        with pytest.raises(InvalidConfig, match="Failed to prepare the migration of 'x': "
                                                "the source aborted it"):
            await asyncio.wait_for(prep, 5)
        assert r.jobs["j1"].state == "aborted"

    asyncio.run(main())
