"""DomainSnapshots: snapshot-create/-list/-revert/-delete of a running domain.

A snapshot is a directory `<state>/snapshots/<domain>/<snap>/`:

    <vdev>.qcow2    each writable disk as it was (read-only; a qcow2 *copy*, see below)
    memory.save     with --memory: the guest's RAM and devices, a save file (savefile.py)

and a "domsnap" document in the store naming them. Snapshots are external copies, not
internal qcow2 snapshots and not overlays swapped under the running guest: that works for
every disk a domain can have (raw files, qcow2, block devices), never changes which file
the domain's config names, and gives `create --from` a read-only base its clones can use
as their backing file. A disk that has a backing file is copied thin: the copy holds only
the disk's own data and shares the base (docs/decisions.md has the times).

Consistency: the guest is stopped for the whole snapshot (QMP `stop` drains and flushes
every disk; with --memory the migration to the save file does the same and inactivates
them), the disks are copied, then it runs on. Disks and memory are thus one point in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xenia.config.model import DiskSpec
from xenia.devices.disk import FORMATS, has_host_file, target_path
from xenia.errors import AlreadyExists, InUse, InvalidConfig, NotFound
from xenia.host.manager import pooled
from xenia.migration import savefile
from xenia.migration.records import portable
from xenia.migration.saving import SaveRestore
from xenia.revert import Revert
from xenia.storage.qemuimg import QemuImg
from xenia.storage.units import check_name
from xenia.store.base import DomainRecord
from xenia.store.state import LIVE, RUNNING, require

if TYPE_CHECKING:
    from xenia.host.manager import DomainManager

log = logging.getLogger(__name__)

SNAP_KIND = "domsnap"
MEMORY_FILE = "memory.save"
READ_ONLY = 0o444


def snapshot_disks(rec: DomainRecord) -> list[DiskSpec]:
    """The disks a snapshot holds: every writable one with an image (cdroms and
    read-only disks cannot change, so the snapshot refers to them as they are)."""
    return [d for d in rec.config.disks
            if not d.is_cdrom and not d.readonly and has_host_file(d)]


def split_ref(ref: str, doing: str) -> tuple[str, str]:
    """("dom", "snap") from "dom@snap" (or "dom/snap")."""
    for sep in ("@", "/"):
        dom, found, snap = ref.partition(sep)
        if found and dom and snap:
            return dom, snap
    raise InvalidConfig(f"Failed {doing}: name the snapshot as DOMAIN@SNAPSHOT, not '{ref}'")


class DomainSnapshots:
    def __init__(self, manager: DomainManager, saves: SaveRestore,
                 qemu_img: QemuImg | None = None) -> None:
        self.m = manager
        self.saves = saves
        self.qemu_img = qemu_img or QemuImg()
        # Called with "dom@snap" before a snapshot is deleted (the clone pool's drain).
        self.before_delete: Callable[[str], Awaitable[None]] | None = None

    @property
    def root(self) -> Path:
        return self.m.paths.state / "snapshots"

    def directory(self, dom: str, snap: str) -> Path:
        return self.root / dom / snap

    def get(self, dom: str, snap: str, doing: str) -> dict[str, Any]:
        check_name("snapshot", snap, doing)
        doc = self.m.store.obj_get(SNAP_KIND, f"{dom}/{snap}")
        if doc is None:
            raise NotFound(f"Failed {doing}: domain '{dom}' has no snapshot '{snap}' "
                           f"(see `xenia snapshot-list {dom}`)")
        return doc

    def list_of(self, dom: str) -> list[dict[str, Any]]:
        docs = [d for d in self.m.store.obj_list(SNAP_KIND) if d["domain"] == dom]
        return sorted(docs, key=lambda d: d["created_at"])

    # -- create --------------------------------------------------------------------------
    async def create(self, ref: str, snap: str, memory: bool) -> dict[str, Any]:
        rec = self.m.resolve(ref)
        doing = f"to snapshot domain '{rec.name}' as '{snap}'"
        check_name("snapshot", snap, doing)
        async with self.m.locked(rec.uuid):
            rec = self.m.store.get(rec.uuid) or rec
            require(rec, "to snapshot", LIVE)
            key = f"{rec.name}/{snap}"
            if self.m.store.obj_get(SNAP_KIND, key) is not None:
                raise AlreadyExists(f"Failed {doing}: it has a snapshot '{snap}' already")
            final = self.directory(rec.name, snap)
            tmp = final.parent / f".tmp-{snap}-{secrets.token_hex(4)}"
            inst = self.m.instance(rec)
            was_running = rec.state == RUNNING
            async with Revert() as revert:
                tmp.mkdir(parents=True, mode=0o700)
                revert.add(lambda: shutil.rmtree(tmp, ignore_errors=True))
                t0 = time.monotonic()
                pinned = None
                if memory:
                    # Stops the guest; QEMU flushes and lets go of the disks.
                    header = await self.saves.write_state(rec, inst, tmp / MEMORY_FILE,
                                                          _meta(rec, snap))
                    # Clones check the file's header against this (migration/clones.py).
                    pinned = header.sha256
                else:
                    await inst.pause()  # QMP stop: drains and flushes every disk
                if was_running:
                    revert.add(inst.resume)
                disks = {}
                for spec in snapshot_disks(rec):
                    dst = tmp / f"{spec.vdev}.qcow2"
                    await asyncio.to_thread(self._copy_out, spec, dst, doing)
                    disks[spec.vdev] = {"file": dst.name, "target": str(target_path(spec)),
                                        "format": spec.format}
                if was_running:
                    await inst.resume()
                stopped = time.monotonic() - t0
                os.rename(tmp, final)
                revert.add(lambda: shutil.rmtree(final, ignore_errors=True))
                doc = {"domain": rec.name, "name": snap, "uuid": rec.uuid,
                       "created_at": time.time(), "memory": memory, "disks": disks,
                       "stopped_seconds": round(stopped, 3)}
                if pinned is not None:
                    doc["memory_header_sha256"] = pinned
                self.m.store.obj_put(SNAP_KIND, key, doc, create=True)
                revert.success()
        log.info("snapshot %s of domain %s: guest stopped %.3f s", snap, rec.name, stopped)
        return doc

    def _copy_out(self, spec: DiskSpec, dst: Path, doing: str) -> None:
        src = target_path(spec)
        fmt = FORMATS[spec.format]
        info = self.qemu_img.info(src, fmt, doing)
        backing = info.get("full-backing-filename") or info.get("backing-filename")
        if backing and not os.path.isabs(backing):
            backing = os.path.normpath(src.parent / backing)
        # Thin: the copy shares the disk's base, which a thin disk's base may never be
        # written (the storage layer refuses), so it stays valid under the copy.
        self.qemu_img.convert(src, fmt, dst, "qcow2", doing, backing=backing,
                              backing_fmt=info.get("backing-filename-format"),
                              force_share=True)
        os.chmod(dst, READ_ONLY)

    # -- revert --------------------------------------------------------------------------
    def _running(self, dom: str) -> DomainRecord | None:
        return next((r for r in self.m.store.list() if r.name == dom), None)

    async def revert(self, dom: str, snap: str) -> dict[str, Any]:
        """Put the domain's disks (and, for a --memory snapshot, the running guest) back to
        the snapshot. A memory snapshot replaces a running domain of that name; a disk-only
        one needs the domain shut down."""
        doing = f"to revert domain '{dom}' to snapshot '{snap}'"
        doc = self.get(dom, snap, doing)
        running = self._running(dom)
        if running is not None and not doc["memory"]:
            raise InUse(f"Failed {doing}: the domain is running and the snapshot has no "
                        "memory state; shut it down first (`xenia destroy "
                        f"{dom}`), or take snapshots with --memory to revert a running guest")
        directory = self.directory(dom, snap)
        if running is not None:
            async with self.m.locked(running.uuid):
                rec = self.m.store.get(running.uuid)
                if rec is not None:
                    await self.m.destroy_locked(rec)
        for vdev, disk in doc["disks"].items():
            await asyncio.to_thread(self._copy_back, directory / disk["file"],
                                    Path(disk["target"]), disk["format"], doing)
            log.info("reverted disk %s of %s to snapshot %s", vdev, dom, snap)
        if doc["memory"]:
            memory = directory / MEMORY_FILE
            # The header's hash here; restore() checks the rest (the checksum included).
            check_pinned(doc, await asyncio.to_thread(savefile.verify, memory, False),
                         memory, doing)
            rec = await self.saves.restore(str(memory))
            return {"domain": rec.name, "uuid": rec.uuid, "running": True}
        return {"domain": dom, "running": False}

    def _copy_back(self, src: Path, target: Path, fmt: str, doing: str) -> None:
        info = self.qemu_img.info(src, "qcow2", doing)
        backing = info.get("full-backing-filename") or info.get("backing-filename")
        if target.is_block_device():
            # Written in place: a device cannot be replaced by a rename.
            self.qemu_img.convert(src, "qcow2", target, "raw", doing, existing=True)
            return
        tmp = target.with_name(f".{target.name}.revert-{secrets.token_hex(4)}")
        try:
            self.qemu_img.convert(src, "qcow2", tmp, FORMATS[fmt], doing, backing=backing,
                                  backing_fmt=info.get("backing-filename-format"))
            os.chmod(tmp, 0o600)
            # One rename: a crash leaves the old or the reverted disk, never a mix.
            os.rename(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    # -- delete --------------------------------------------------------------------------
    async def delete(self, dom: str, snap: str) -> None:
        doing = f"to delete snapshot '{snap}' of domain '{dom}'"
        self.get(dom, snap, doing)
        running, stale = self.clones_of(dom, snap)
        if not running and self.before_delete is not None:
            # The QEMUs started ahead for its clones (clonepool.py) go first; their
            # overlay directories are then among the stale ones.
            await self.before_delete(f"{dom}@{snap}")
            running, stale = self.clones_of(dom, snap)
        if running:
            raise InUse(f"Failed {doing}: {', '.join(running)} "
                        f"{'runs' if len(running) == 1 else 'run'} from it (clone disks read "
                        "from its disks); destroy them first")
        # Record first: a crash in between leaves files without a record (unreachable),
        # never a record whose files are gone. The disks of clones that no longer run go
        # with it: they are overlays of its files and useless without them.
        self.m.store.obj_delete(SNAP_KIND, f"{dom}/{snap}")
        for d in stale:
            await asyncio.to_thread(shutil.rmtree, d, True)
        await asyncio.to_thread(shutil.rmtree, self.directory(dom, snap), True)
        with contextlib.suppress(OSError):
            (self.root / dom).rmdir()

    def clones_of(self, dom: str, snap: str) -> tuple[list[str], list[Path]]:
        """(names of running clones, directories of gone ones) whose disks are backed by
        this snapshot's files (migration/clones.py writes the "origin" file)."""
        clones = self.m.paths.state / "clones"
        if not clones.is_dir():
            return [], []
        mine = str(self.directory(dom, snap))
        # A clone's disks are in its directory, named after the clone or, for one started
        # from the clone pool, after its pool entry.
        # QEMUs started ahead for clones (pooled) are neither: delete() ends them first.
        recs = self.m.store.list()
        users = {str(Path(d.target).parent): r.name for r in recs if not pooled(r)
                 for d in r.config.disks if d.target}
        ahead = {str(Path(d.target).parent) for r in recs if pooled(r)
                 for d in r.config.disks if d.target}
        running, stale = [], []
        for d in sorted(clones.iterdir()):
            with contextlib.suppress(OSError):
                if (d / "origin").read_text().strip() == mine and str(d) not in ahead:
                    if str(d) in users:
                        running.append(users[str(d)])
                    else:
                        stale.append(d)
        return sorted(running), stale


def check_pinned(doc: dict[str, Any], header: savefile.SaveHeader, memory: Path,
                 doing: str) -> None:
    """The memory file's header is the one hashed into the snapshot's record when it was
    taken (a record xeniad keeps where no QEMU reaches)."""
    pinned = doc.get("memory_header_sha256")
    if pinned is None:
        raise InvalidConfig(f"Failed {doing}: the snapshot's record has no hash of its "
                            "memory file's header (taken by an older Xenia, whose QEMU "
                            "could write that file); take the snapshot again")
    if header.sha256 != pinned:
        raise InvalidConfig(f"Failed {doing}: the header of {memory} is not the one "
                            "recorded when the snapshot was taken (it was changed); "
                            "delete the snapshot and take it again")


def _meta(rec: DomainRecord, snap: str) -> dict[str, Any]:
    return {"record": portable(rec), "saved_at": time.time(), "snapshot": snap,
            "was_paused": rec.state != RUNNING}
