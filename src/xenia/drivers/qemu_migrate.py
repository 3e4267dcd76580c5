"""Save, restore and live migration verbs of a QEMU domain (mixed into QemuInstance)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from xenia.errors import XeniaError
from xenia.migration import savefile
from xenia.qemu import stream
from xenia.qemu.commands import Qmp
from xenia.qemu.process import QemuProcess
from xenia.revert import Revert

log = logging.getLogger(__name__)

# Saving to a local file: no reason to hold QEMU to its default 128 MiB/s network cap.
FILE_BANDWIDTH = 64 * 1024**3


class MigrateMixin:
    proc: QemuProcess
    qmp: Qmp

    async def status(self) -> str:
        return await self.qmp.query_status()

    async def save_state(self, path: Path, meta: dict[str, Any]) -> int:
        """Stop the guest and write its state into a save file at `path` (atomically).

        Leaves the guest stopped (QEMU's "postmigrate"); the caller resumes or destroys.
        Returns the file's size. On failure the guest runs on as before and no file is left.
        """
        was_running = await self.status() == "running"
        tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
        async with Revert() as revert:
            await self.qmp.stop()
            if was_running:
                revert.add(self.qmp.cont)
            revert.add(self.cancel_migration)
            revert.add(lambda: tmp.unlink(missing_ok=True))
            header = savefile.begin(tmp, meta)
            await self.qmp.migrate_set_capabilities(auto_converge=False, postcopy_ram=False)
            await self.qmp.migrate_set_parameters(max_bandwidth=FILE_BANDWIDTH, tls_creds="")
            await self.qmp.migrate(f"file:{tmp},offset={header.offset}")
            await stream.wait(self.qmp, what=f"saving to {path}")
            size = savefile.finish(tmp, header)
            os.replace(tmp, path)
            revert.success()
        return size

    async def receive_file(self, path: Path, offset: int) -> None:
        """On a QEMU started with -incoming defer: load the state from a save file."""
        await self.qmp.migrate_incoming(f"file:{path},offset={offset}")
        await stream.wait_incoming(self.qmp, lambda: self.proc.alive,
                                   what=f"restoring from {path}")

    async def receive_stream(self, uri: str, caps: dict[str, bool],
                             params: dict[str, Any]) -> None:
        """On a QEMU started with -incoming defer: listen for a live migration."""
        if caps:
            await self.qmp.migrate_set_capabilities(**caps)
        if params:
            await self.qmp.migrate_set_parameters(**params)
        await self.qmp.migrate_incoming(uri)

    async def cancel_migration(self) -> None:
        """Cancel an outgoing migration and wait until QEMU has settled (see stream)."""
        try:
            await stream.cancel(self.qmp)
        except XeniaError as e:
            log.warning("cancelling the migration: %s", e.message)
