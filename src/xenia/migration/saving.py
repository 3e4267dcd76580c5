"""SaveRestore: xl save and xl restore, built on the driver's save/restore verbs.

The save file's format (savefile.py) is this package's; the driver only streams the
domain's state into it at an offset (Driver.save) and back out (Driver.restore).
"""

from __future__ import annotations

import asyncio
import logging
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xenia.config.model import DomainConfig
from xenia.drivers.base import Instance
from xenia.errors import InvalidConfig, NotFound
from xenia.host.validate import check_config, check_name
from xenia.migration import admission, savefile
from xenia.migration.records import arrived, portable
from xenia.qemu.binary import machine_types
from xenia.revert import Revert
from xenia.store.base import DomainRecord
from xenia.store.state import LIVE, PAUSED, RUNNING, require

if TYPE_CHECKING:
    from xenia.host.manager import DomainManager

log = logging.getLogger(__name__)


class SaveRestore:
    def __init__(self, manager: DomainManager) -> None:
        self.m = manager

    async def save(self, ref: str, path: str, keep: bool, leave_paused: bool) -> dict[str, Any]:
        """xl save: the domain's state into a self-describing, checksummed file.

        Afterwards the domain is destroyed (xl's default), kept running (-c) or kept
        paused (-p).
        """
        target = Path(path)
        if not target.is_absolute():
            raise InvalidConfig(f"Failed to save to '{path}': give an absolute path")
        if not target.parent.is_dir():
            raise NotFound(f"Failed to save to {target}: directory {target.parent} does not "
                           "exist")
        rec = self.m.resolve(ref)
        async with self.m.locked(rec.uuid):
            rec = self.m.store.get(rec.uuid) or rec
            require(rec, "to save", LIVE)
            inst = self.m.instance(rec)
            info = self.m.driver_for(rec.config).host_info()
            meta = {"record": portable(rec), "saved_at": time.time(),
                    "qemu_version": info.get("qemu_version"), "host": platform.node(),
                    "was_paused": rec.state == PAUSED}
            t0 = time.monotonic()
            size = (await self.write_state(rec, inst, target, meta)).size
            took = time.monotonic() - t0
            if keep:
                if rec.state == RUNNING:
                    await inst.resume()
            elif leave_paused:
                self.m.set_state(rec, PAUSED)
            else:
                await self.m.destroy_locked(rec)  # its state is in the file now
        log.info("saved domain %s to %s (%d bytes, %.2f s)", rec.name, target, size, took)
        return {"file": str(target), "bytes": size, "seconds": took}

    async def write_state(self, rec: DomainRecord, inst: Instance, target: Path,
                          meta: dict[str, Any]) -> savefile.SaveHeader:
        """The save file at `target`, written whole or not at all (a partial file is
        renamed into place only once complete); its header, with the file's size. Leaves
        the guest stopped; on failure it runs on as it did."""
        tmp = savefile.partial_name(target)
        async with Revert() as revert:
            header = savefile.begin(tmp, meta)
            revert.add(lambda: tmp.unlink(missing_ok=True))
            await self.m.driver_for(rec.config).save(inst, tmp, header.offset)
            if rec.state == RUNNING:
                revert.add(inst.resume)
            header.size = savefile.finish(tmp, header)
            savefile.publish(tmp, target)
            revert.success()
        return header

    async def restore(self, path: str, paused: bool = False,
                      overrides: dict[str, Any] | None = None,
                      admit: Callable[[DomainConfig], None] | None = None) -> DomainRecord:
        """xl restore: a new domain from a save file, continuing where it stopped.

        `admit(config)` may refuse the config the file carries (the API's checks for a
        token: its name and paths); it runs on a worker thread, after the overrides.
        """
        target = Path(path)
        header = await asyncio.to_thread(savefile.verify, target)
        # The file may have been written by anyone (a guest's disk, a peer): its record
        # passes the checks of a record from another host.
        await asyncio.to_thread(admission.check_arriving, header.meta.get("record"),
                                f"to restore from {target}", machine_types)
        try:
            rec = arrived(header.meta["record"])
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidConfig(f"Failed to restore from {target}: bad domain record ({e})") \
                from e
        if overrides and overrides.get("name"):
            check_name(overrides["name"])
            rec.name = rec.config.name = overrides["name"]
        if admit is not None:
            await asyncio.to_thread(admit, rec.config)
        check_config(rec.config)
        drv = self.m.driver_for(rec.config)

        async def receive(inst: Instance) -> None:
            await drv.restore(inst, target, header.offset)

        was_paused = bool(header.meta.get("was_paused"))
        return await self.m.build(rec, paused=paused or was_paused, incoming="defer",
                                  receive=receive, doing="restore")
