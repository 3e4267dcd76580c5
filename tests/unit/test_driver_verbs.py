"""The driver interface's refusals: a container is not saved, restored or migrated, and
a driver's DeviceControl refuses what it cannot do, each with a message naming the
domain and its type (the sender used to fail on a container with an AttributeError)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from xenia.config.model import DomainConfig
from xenia.drivers.base import DeviceControl, IncomingSetup, MigrationOptions, MigrationTarget
from xenia.drivers.container import ContainerDriver
from xenia.errors import NotSupported
from xenia.paths import Paths
from xenia.store.base import DomainRecord


def container(tmp_path: Path) -> tuple[ContainerDriver, Any]:
    paths = Paths(state=tmp_path / "state", run=tmp_path / "run")
    drv = ContainerDriver(paths, store=None, network=None)  # type: ignore[arg-type]
    rec = DomainRecord(uuid="6b1f6c57-0000-4000-8000-000000000002", name="ct1", domid=4,
                       config=DomainConfig(name="ct1", type="container"))
    return drv, SimpleNamespace(record=rec)


def test_a_container_is_not_moved(tmp_path: Path) -> None:
    drv, inst = container(tmp_path)
    target = MigrationTarget(host="h", port=1)
    verbs: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("save the state of", lambda: drv.save(inst, tmp_path / "f", 4096)),
        ("restore the state of", lambda: drv.restore(inst, tmp_path / "f", 4096)),
        ("migrate", lambda: drv.check_migrate(inst)),
        ("migrate", lambda: drv.migrate(inst, target, MigrationOptions(host="h"),
                                        SimpleNamespace())),  # type: ignore[arg-type]
        ("migrate", lambda: drv.abort_migration(inst, target, True)),
        ("receive", lambda: drv.accept_migration(inst, IncomingSetup("j", "::1"))),
        ("receive", lambda: drv.receive_migration(inst, 1.0)),
    ]
    for doing, verb in verbs:
        with pytest.raises(NotSupported) as e:
            asyncio.run(verb())
        assert e.value.message == (f"Failed to {doing} 'ct1': its type (container) does "
                                   "not support it")
    assert not (tmp_path / "f").exists() and not (tmp_path / "run").exists()


def test_device_control_refuses_by_default(tmp_path: Path) -> None:
    _, inst = container(tmp_path)
    dev = DeviceControl(inst.record)
    with pytest.raises(NotSupported, match=r"^Failed to attach a disk of 'ct1': its type "
                                           r"\(container\) does not support it$"):
        asyncio.run(dev.attach_disk(inst.record, None))  # type: ignore[arg-type]
    with pytest.raises(NotSupported, match="^Failed to take a screenshot of 'ct1'"):
        asyncio.run(dev.screenshot())
