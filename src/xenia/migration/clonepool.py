"""ClonePool: QEMUs started ahead of `xenia create --from`, a few per snapshot.

A clone's start is mostly QEMU's own: exec, device realize, firmware tables, before the
snapshot's memory is even read. A pool entry pays that before the request: it is a clone
built as far as `-incoming defer` (DomainManager.build with a `receive` that waits),
under a fresh identity chosen now (UUID, MACs: what QEMU's argv holds) and a placeholder
name, with its copy-on-write disks made and given to its own QEMU uid like any domain's.
The entry also loads the snapshot's memory (`migrate-incoming`) and waits, paused.
`create --from` claims one: the entry is renamed to the clone's name, runs (`cont`) and
is the domain from then on; its overlay directory keeps the placeholder's name. Then
the next entry starts in the background.

An entry is in the store (so a killed xeniad's restart reaps it like any half-built
domain) but marked (host.manager.POOLED) and not listed. Entries go with their
snapshot's delete and on xeniad's stop; one whose QEMU died is dropped and replaced,
never handed out. The pool for a snapshot is made at its first `create --from`; its size
is XENIA_CLONE_POOL (default 1; 0: no pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import shutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xenia.drivers.base import Instance
from xenia.errors import XeniaError
from xenia.host.manager import POOLED
from xenia.store.base import DomainRecord

if TYPE_CHECKING:
    from xenia.migration.clones import Clones

log = logging.getLogger(__name__)

SIZE_ENV = "XENIA_CLONE_POOL"
DEFAULT_SIZE = 1
# How often a waiting entry looks whether its QEMU still runs.
ALIVE_EVERY = 0.25
# A claim waits this long for an entry still starting before it starts a clone itself.
STARTING_WAIT = 5.0


def pool_size() -> int:
    text = os.environ.get(SIZE_ENV, "")
    try:
        return max(0, int(text)) if text else DEFAULT_SIZE
    except ValueError:
        log.warning("%s=%r is no number; using %d", SIZE_ENV, text, DEFAULT_SIZE)
        return DEFAULT_SIZE


class EntryDied(XeniaError):
    """A pool entry's QEMU exited before it was claimed."""


@dataclass
class Entry:
    ref: str
    task: asyncio.Task[DomainRecord] | None = None
    inst: Instance | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    claim: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def usable(self) -> bool:
        return not self.claim.done() and (self.inst is None or self.inst.alive)


class ClonePool:
    def __init__(self, clones: Clones, size: int | None = None) -> None:
        self.clones = clones
        self.size = pool_size() if size is None else size
        self._entries: dict[str, list[Entry]] = {}
        self._closed = False

    def entries(self, ref: str) -> list[Entry]:
        return list(self._entries.get(ref, []))

    # -- claim ---------------------------------------------------------------------------
    async def claim(self, ref: str, name: str) -> DomainRecord | None:
        """Turn one of `ref`'s entries into the running clone `name`; None if none is at
        hand (the caller starts the clone itself). The pool is refilled either way."""
        if self.size <= 0 or self._closed:
            return None
        self.fill(ref)  # the pool's first claim makes it; it may wait for that entry
        entry = await self._pick(ref)
        if entry is None:
            return None
        assert entry.task is not None
        entry.claim.set_result(name)
        try:
            rec = await asyncio.shield(entry.task)
        except XeniaError as e:
            # The build undid itself (no QEMU, no record): start the clone the usual way.
            log.warning("clone %s: the QEMU started ahead failed (%s); starting one",
                        name, e.message)
            return None
        # The next QEMU starts now, though its start shares the host's CPU with the new
        # clone's first commands: put off by 1 s, 20 clones in a row each waited for a
        # whole QEMU start (docs/decisions.md).
        self.fill(ref)
        return rec

    async def _pick(self, ref: str) -> Entry | None:
        """A ready entry whose QEMU runs; else wait a little for one still starting."""
        candidates = [e for e in self._entries.get(ref, []) if e.usable]
        for e in candidates:
            if e.ready.is_set():
                return e
        for e in candidates:
            assert e.task is not None
            ready = asyncio.ensure_future(e.ready.wait())
            try:
                await asyncio.wait({ready, e.task}, timeout=STARTING_WAIT,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                ready.cancel()
            if e.ready.is_set() and e.usable:
                return e
        return None

    # -- filling -------------------------------------------------------------------------
    def fill(self, ref: str) -> None:
        """Start entries for `ref` until it has `size` unclaimed ones (in the background)."""
        if self._closed:
            return
        have = sum(e.usable for e in self._entries.get(ref, []))
        for _ in range(self.size - have):
            entry = Entry(ref)
            entry.task = asyncio.get_running_loop().create_task(
                self._build(entry), name=f"clone-pool-{ref}")
            entry.task.add_done_callback(functools.partial(self._ended, entry))
            self._entries.setdefault(ref, []).append(entry)

    async def _build(self, entry: Entry) -> DomainRecord:
        name = f"pool-{secrets.token_hex(4)}"
        rec, source, cdir = await self.clones.stage(entry.ref, name)
        rec.runtime[POOLED] = entry.ref
        load = self.clones.receiver(rec, source)
        m = self.clones.m

        async def receive(inst: Instance) -> None:
            entry.inst = inst
            # The memory is loaded ahead too: a claim is then a rename and `cont`. The
            # load was ~0.1 s of a clone's ~0.23 s to a command answered; a waiting entry
            # holds the template's used RAM besides QEMU's own.
            await load(inst)
            entry.ready.set()
            clone = await self._claimed(entry, inst)
            await m.rename_record(rec, clone)  # from here on the record is the clone's

        try:
            return await m.build(rec, incoming="defer", receive=receive, doing="create")
        except BaseException:
            shutil.rmtree(cdir, ignore_errors=True)
            raise

    @staticmethod
    async def _claimed(entry: Entry, inst: Instance) -> str:
        """The clone's name once claimed; EntryDied if its QEMU exits first."""
        while True:
            done, _ = await asyncio.wait({entry.claim}, timeout=ALIVE_EVERY)
            if done:
                return entry.claim.result()
            if not inst.alive:
                entry.claim.cancel()  # never handed out now
                raise EntryDied(f"Failed to keep a QEMU ready for snapshot '{entry.ref}': "
                                "it exited")

    def _ended(self, entry: Entry, task: asyncio.Task[DomainRecord]) -> None:
        with contextlib.suppress(ValueError):
            self._entries.get(entry.ref, []).remove(entry)
        if task.cancelled():
            return
        err = task.exception()
        if err is None:
            return  # claimed: claim() refills
        log.warning("clone pool of %s: an entry ended: %s", entry.ref, err)
        # A QEMU that was up and died is replaced; one that never came up is not
        # retried in a loop (the next claim tries again).
        if isinstance(err, EntryDied):
            self.fill(entry.ref)

    # -- ending --------------------------------------------------------------------------
    async def drain(self, ref: str) -> None:
        """Stop `ref`'s unclaimed entries (its snapshot goes): QEMUs, uids, files."""
        entries = self._entries.pop(ref, [])
        await self._stop(entries)

    async def close(self) -> None:
        """xeniad stops: no entry outlives it (a clone not claimed is no domain)."""
        self._closed = True
        entries = [e for es in self._entries.values() for e in es]
        self._entries.clear()
        await self._stop(entries)

    @staticmethod
    async def _stop(entries: list[Entry]) -> None:
        tasks = []
        for e in entries:
            if e.task is not None and not e.claim.done():
                e.claim.cancel()
                e.task.cancel()  # build()'s undo: QEMU, host side, uid, record
                tasks.append(e.task)
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
