"""Clones: `xenia create --from DOMAIN@SNAPSHOT`, a new domain started from a booted
snapshot instead of a boot (the class is Clones).

A clone is the snapshot's machine (its config and memory, saved by snapshot-create
--memory) under a new identity: its own name, UUID and MAC addresses, and copy-on-write
disks `<state>/clones/<name>/<vdev>.qcow2` backed by the snapshot's read-only disk copies.
QEMU loads the snapshot's memory with `-incoming` (like `xl restore`), so the guest goes
on from the moment of the snapshot, in a fraction of a boot.

The guest learns its new identity on its console: once it runs, Xenia types one command
line into the console shell (the tiny image's contract, images/tiny.py) that sets the
hostname and each NIC's MAC and restarts DHCP on it, and waits for that line's answer.
A clone started paused gets no such line (its shell cannot answer). A clone's disk
directory is replaced when a new clone of the same name starts; snapshot-delete removes
the directories of its clones that no longer run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import socket
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from xenia.config.model import DomainConfig
from xenia.drivers.base import Instance
from xenia.errors import AlreadyExists, BackendError, InvalidConfig
from xenia.host.validate import check_config, check_name
from xenia.hostos.peercred import Peer, check_peer
from xenia.migration import admission, savefile
from xenia.migration.records import arrived
from xenia.migration.snapshots import MEMORY_FILE, DomainSnapshots, check_pinned, split_ref
from xenia.qemu.binary import machine_types
from xenia.storage.qemuimg import QemuImg
from xenia.store.base import DomainRecord

if TYPE_CHECKING:
    from xenia.host.manager import DomainManager

log = logging.getLogger(__name__)

ORIGIN_FILE = "origin"  # in a clone's directory: the snapshot directory it is backed by
IDENTITY_TIMEOUT = 10.0


def new_mac() -> str:
    """A random MAC in Xen's OUI 00:16:3e, as xl generates them (local bit clear)."""
    tail = secrets.token_bytes(3)
    return "00:16:3e:" + ":".join(f"{b:02x}" for b in (tail[0] & 0x7F, tail[1], tail[2]))


def identity_line(rec: DomainRecord, token: str) -> str:
    """The shell line that gives a clone's guest its identity, ending in a marker whose
    answer (`<token>-42`) differs from its echo, so the caller knows it ran. The guest's
    SMBIOS UUID is the template's (firmware tables are in the restored memory), so the
    new one is written to /run/xenia/uuid."""
    cfg = rec.config
    # Shell builtins and redirections only where possible: under TCG every forked
    # program is code translated afresh after a restore (`hostname` cost ~0.1 s here).
    cmds = [f"echo {cfg.name} >/proc/sys/kernel/hostname", f"echo {rec.uuid} >/run/xenia/uuid"]
    for i, vif in enumerate(cfg.vifs):
        cmds.append(f"ip link set dev eth{i} address {vif.mac}")
        cmds.append(f"(udhcpc -i eth{i} -b -q >/dev/null 2>&1 &)")
    cmds.append(f"echo {token}-$((40+2))")
    return ";".join(cmds) + "\n"


def send_identity(console: Path, line: str, timeout: float,
                  peer: Peer | None = None) -> socket.socket:
    """Connect to the console socket and type `line`; the open connection.

    It must stay open until the guest has answered: QEMU drops a client's unread input
    when the client hangs up, and the serial port takes 16 bytes at a time. While it is
    open, QEMU accepts no other client, so a user's command that connects next waits
    in the socket's backlog and reaches the guest after the identity line."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(console))
        if peer is not None:  # the run dir is QEMU's: the path may lead to another's
            check_peer(sock, peer, f"the console at {console}")
        sock.sendall(line.encode())
    except OSError as e:
        sock.close()
        raise BackendError(f"Failed to give the clone its identity on {console}: {e}"
                           ) from e
    return sock


def wait_answer(sock: socket.socket, answer: str) -> None:
    """Read the console until `answer` (the identity line ran), then hang up."""
    seen = b""
    with sock:
        try:
            while answer.encode() not in seen:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                seen = seen[-4096:] + chunk
        except OSError as e:
            raise BackendError(f"Failed to give the clone its identity: {e}") from e
    if answer.encode() not in seen:
        raise BackendError(f"Failed to give the clone its identity: the console closed "
                           f"before the guest answered ({seen[-200:]!r})")


def _identity_of(path: Path) -> tuple[int, ...]:
    """What changes whenever the file is replaced or written (ctime: not settable)."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Pool(Protocol):
    """QEMUs started ahead for clones (clonepool.ClonePool)."""

    async def claim(self, ref: str, name: str) -> DomainRecord | None: ...


@dataclass
class Source:
    """What a clone starts from: the snapshot's document, directory and memory file."""

    doc: dict[str, Any]
    directory: Path
    memory: Path
    header: savefile.SaveHeader


class Clones:
    def __init__(self, manager: DomainManager, snapshots: DomainSnapshots,
                 qemu_img: QemuImg | None = None) -> None:
        self.m = manager
        self.snapshots = snapshots
        self.qemu_img = qemu_img or QemuImg()
        self._tasks: set[asyncio.Task[None]] = set()  # identity answers awaited
        self.pool: Pool | None = None  # QEMUs started ahead (set by the engine)
        # Memory files that passed the checksum and check_arriving, by file identity.
        self._checked: dict[Path, tuple[int, ...]] = {}

    @property
    def root(self) -> Path:
        return self.m.paths.state / "clones"

    async def start(self, ref: str, name: str, paused: bool = False,
                    admit: Callable[[DomainConfig], None] | None = None) -> DomainRecord:
        doing = f"to create domain '{name}' from snapshot '{ref}'"
        t0 = time.monotonic()
        check_name(name)
        stage = await self._source(ref, doing)
        rec = self._identity(arrived(stage.header.meta["record"]), name, ref)
        if admit is not None:
            await asyncio.to_thread(admit, rec.config)
        check_config(rec.config)
        if any(other.name == name for other in self.m.store.list()):
            raise AlreadyExists(f"Failed {doing}: a domain named '{name}' exists already")
        if self.pool is not None and not paused and not rec.config.ha:
            # A QEMU started ahead for this snapshot (clonepool.py); None: none at hand.
            t1 = time.monotonic()
            claimed = await self.pool.claim(ref, name)
            if claimed is not None:
                t2 = time.monotonic()
                await self._tell(claimed)
                log.info("clone %s of %s: prepare %.3f s, pooled QEMU claim + cont %.3f s, "
                         "identity typed %.3f s", name, ref, t1 - t0, t2 - t1,
                         time.monotonic() - t2)
                return claimed
        cdir = self.root / name
        await asyncio.to_thread(self._disks, rec, stage.doc, stage.directory, cdir, doing)
        t1 = time.monotonic()
        try:
            rec = await self.m.build(rec, paused=paused, incoming="defer",
                                     receive=self.receiver(rec, stage), doing="create")
        except BaseException:
            shutil.rmtree(cdir, ignore_errors=True)
            raise
        t2 = time.monotonic()
        if not paused:
            await self._tell(rec)
        # Where a clone's start goes (docs/decisions.md has the numbers).
        log.info("clone %s of %s: prepare + disks %.3f s, QEMU start + load %.3f s, "
                 "identity typed %.3f s", name, ref, t1 - t0, t2 - t1, time.monotonic() - t2)
        return rec

    async def _source(self, ref: str, doing: str) -> Source:
        dom, snap = split_ref(ref, doing)
        doc = self.snapshots.get(dom, snap, doing)
        if not doc["memory"]:
            raise InvalidConfig(f"Failed {doing}: the snapshot has no memory state; take "
                                f"one with `xenia snapshot-create --memory {dom} NAME`")
        directory = self.snapshots.directory(dom, snap)
        memory = directory / MEMORY_FILE
        # The checks a restore runs, and the header must be the one hashed into the
        # snapshot's record when it was taken (a record no QEMU reaches). The checksum
        # pass (~0.2 s per 100 MB here) and check_arriving (~0.06 s: QEMU's machine
        # list) run once per file, not per clone, while the file stays the same one.
        ident = await asyncio.to_thread(_identity_of, memory)
        checked = self._checked.get(memory) == ident
        header = await asyncio.to_thread(savefile.verify, memory, not checked)
        check_pinned(doc, header, memory, doing)
        if not checked:
            await asyncio.to_thread(admission.check_arriving, header.meta.get("record"),
                                    doing, machine_types)
            self._checked[memory] = ident
        return Source(doc, directory, memory, header)

    async def stage(self, ref: str, name: str) -> tuple[DomainRecord, Source, Path]:
        """A clone's record under `name` with its copy-on-write disks made (the pool's
        entries, before their QEMU starts): (record, source, disk directory)."""
        doing = f"to start a QEMU ahead for snapshot '{ref}'"
        stage = await self._source(ref, doing)
        rec = self._identity(arrived(stage.header.meta["record"]), name, ref)
        check_config(rec.config)
        cdir = self.root / name
        await asyncio.to_thread(self._disks, rec, stage.doc, stage.directory, cdir, doing)
        return rec, stage, cdir

    def receiver(self, rec: DomainRecord,
                 stage: Source) -> Callable[[Instance], Awaitable[None]]:
        """build()'s `receive`: load the snapshot's memory into the clone's QEMU."""
        drv = self.m.driver_for(rec.config)

        async def receive(inst: Instance) -> None:
            await drv.restore(inst, stage.memory, stage.header.offset)

        return receive

    def _identity(self, rec: DomainRecord, name: str, ref: str) -> DomainRecord:
        rec.name = rec.config.name = name
        rec.uuid = str(uuidlib.uuid4())
        rec.config.uuid = None
        rec.config.from_snapshot = ref
        for vif in rec.config.vifs:
            vif.mac = new_mac()
        return rec

    def _disks(self, rec: DomainRecord, doc: dict[str, Any], directory: Path, cdir: Path,
               doing: str) -> None:
        """Copy-on-write disks over the snapshot's copies; the config names them."""
        shutil.rmtree(cdir, ignore_errors=True)  # an earlier clone of this name, not running
        cdir.mkdir(parents=True, mode=0o700)
        try:
            (cdir / ORIGIN_FILE).write_text(str(directory) + "\n")
            for spec in rec.config.disks:
                disk = doc["disks"].get(spec.vdev)
                if disk is None:
                    continue  # read-only disks and cdroms: shared as they are
                overlay = cdir / f"{spec.vdev}.qcow2"
                self.qemu_img.create(overlay, "qcow2", None, doing,
                                     backing=str(directory / disk["file"]), backing_fmt="qcow2")
                spec.target, spec.format = str(overlay), "qcow2"
        except BaseException:
            shutil.rmtree(cdir, ignore_errors=True)
            raise

    async def _tell(self, rec: DomainRecord) -> None:
        """Type the identity line; its answer is awaited in the background (the console
        keeps input in order, so whatever is typed next runs after it)."""
        # Short: the guest's shell reads the line a character at a time (line editing),
        # each one translated code under TCG the first time after the restore.
        token = f"xc{secrets.token_hex(4)}"
        line = identity_line(rec, token)
        inst = self.m.instance(rec)
        t0 = time.monotonic()
        try:
            sock = await asyncio.to_thread(send_identity, inst.console_path(), line,
                                           IDENTITY_TIMEOUT, inst.console_peer())
        except BackendError as e:
            # The domain runs; only its guest does not know its new name yet.
            log.warning("domain %s: %s", rec.name, e.message)
            return
        task = asyncio.get_running_loop().create_task(
            self._answered(rec.name, sock, f"{token}-42", t0), name=f"identity-{rec.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _answered(name: str, sock: socket.socket, answer: str, t0: float) -> None:
        try:
            await asyncio.to_thread(wait_answer, sock, answer)
        except BackendError as e:
            log.warning("domain %s: %s", name, e.message)
            return
        log.info("clone %s answered its identity line %.3f s after it was sent", name,
                 time.monotonic() - t0)
