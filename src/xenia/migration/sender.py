"""Sender: the source side of a live migration (MigrationJob), driving the driver.

Order: pre-flight here and at the destination (all problems reported at once) -> the
destination prepares a paused QEMU listening for the stream -> the driver sends the
domain (disks mirrored live with --copy-storage, then RAM pre-copy) -> on completion the
destination resumes and the domain is handed over (gone here). Any failure before the
destination resumed leaves the source running and tells the destination to throw its
copy away; a switch-over that cannot be confirmed leaves it paused here.

What moves the state is the driver's (Driver.migrate, drivers/qemu_migrate.py); this
module talks to the peer and to the DomainManager's public surface only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xenia.config.model import DiskSpec
from xenia.devices import disk as diskdev
from xenia.drivers.base import MigrationOptions, MigrationTarget
from xenia.errors import BackendError, InvalidConfig, NotFound, Unreachable, XeniaError
from xenia.migration import preflight
from xenia.migration.records import copied_disks, portable
from xenia.peers.client import PeerClient
from xenia.peers.psk import make_psk, remove_psk_dir, write_psk_dir
from xenia.peers.secrets import PeerTokenFiles
from xenia.revert import Revert
from xenia.store.state import PAUSED, RUNNING

if TYPE_CHECKING:
    from xenia.host.manager import DomainManager
    from xenia.storage.manager import StorageManager
    from xenia.store.base import DomainRecord

log = logging.getLogger(__name__)

# How long the source keeps asking a destination it cannot reach to confirm the commit.
COMMIT_TRIES_FOR = 20.0


@dataclass
class MigrationJob:
    """One outgoing migration as `xenia migrate` follows it (the driver's MigrationReport)."""

    id: str
    domain: str
    uuid: str
    options: MigrationOptions
    status: str = "checking"  # checking, preparing, mirroring, migrating, completing,
    #                           completed, failed, cancelled
    message: str = ""
    progress: dict[str, Any] = field(default_factory=dict)
    downtime_ms: int | None = None
    downtime_limit_ms: int | None = None  # set when --auto-converge had to raise it
    total_ms: int | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    task: asyncio.Task[None] | None = None

    def view(self) -> dict[str, Any]:
        return {f.name: (asdict(v) if f.name == "options" else v)
                for f in fields(self) if f.name != "task"
                for v in [getattr(self, f.name)]}


class Sender:
    def __init__(self, manager: DomainManager, storage: StorageManager) -> None:
        self.m = manager
        self.storage = storage
        self.jobs: dict[str, MigrationJob] = {}
        self._background: set[asyncio.Task[bool]] = set()
        # On a cluster member: name -> client of that member (cluster/node.py), so that a
        # migration inside the cluster needs no `xenia host add`. Known peers go first.
        self.cluster_peer: Callable[[str], PeerClient | None] | None = None
        # Replicated volumes (engine.py wires Replication.replica_host_of): path -> host.
        self.replica_host_of: Callable[[str], str | None] = lambda path: None

    def job_for(self, uuid: str) -> MigrationJob | None:
        for job in self.jobs.values():
            if job.uuid == uuid and job.finished is None:
                return job
        return None

    async def start(self, ref: str, opts: MigrationOptions) -> MigrationJob:
        rec = self.m.resolve(ref)
        if self.job_for(rec.uuid) is not None:
            raise InvalidConfig(f"Failed to migrate '{rec.name}': it is being migrated "
                                f"already (cancel with `xenia migrate --cancel {rec.name}`)")
        try:
            peer = PeerClient.from_store(self.m.store, opts.host,
                                         PeerTokenFiles(self.m.paths.peer_tokens))
        except NotFound:
            found = self.cluster_peer(opts.host) if self.cluster_peer is not None else None
            if found is None:
                raise
            peer = found
        job = MigrationJob(uuid=rec.uuid, domain=rec.name, id=str(uuidlib.uuid4()),
                           options=opts)
        self.jobs[job.id] = job
        job.task = asyncio.get_running_loop().create_task(self._run(job, peer))
        return job

    async def cancel(self, job: MigrationJob) -> None:
        if job.task is not None and not job.task.done():
            job.task.cancel()
            with contextlib.suppress(BaseException):
                await job.task

    # -- the migration -------------------------------------------------------------------
    async def _run(self, job: MigrationJob, peer: PeerClient) -> None:
        try:
            async with self.m.locked(job.uuid):
                await self._migrate(job, peer)
            job.status = "completed"
        except asyncio.CancelledError:
            job.status, job.message = "cancelled", (
                f"Migration of '{job.domain}' cancelled; it keeps running on this host")
        except XeniaError as e:
            job.status, job.message = "failed", e.message
        except Exception as e:  # unexpected: still report, never kill the daemon
            log.exception("migration of %s", job.domain)
            job.status, job.message = "failed", f"Failed to migrate '{job.domain}': {e}"
        finally:
            job.finished = time.time()
            log.info("migration %s of %s: %s %s", job.id, job.domain, job.status,
                     job.message)

    async def _migrate(self, job: MigrationJob, peer: PeerClient) -> None:
        opts = job.options
        rec = self.m.store.get(job.uuid)
        if rec is None:
            raise InvalidConfig(f"Failed to migrate '{job.domain}': it is gone")
        inst = self.m.instance(rec)
        drv = self.m.driver_for(rec.config)
        info = drv.host_info()
        accel = str(rec.runtime.get("accel", info.get("accel")))
        qver = str(info.get("qemu_version"))
        problems = preflight.check_source(rec.config, rec.state, accel, qver, live=True)
        problems += preflight.replicated_disks(rec.config, self.replica_host_of)
        await drv.check_migrate(inst)
        record = portable(rec)
        facts = preflight.source_facts(record, accel, qver)
        try:
            await peer.arequest("GET", "/v1/host", timeout=10)
        except XeniaError as e:
            raise type(e)(f"Failed to migrate '{rec.name}' to '{opts.host}': {e.message}") \
                from e
        checked = await peer.arequest("POST", "/v1/migrations/check", {
            "record": record, "facts": facts, "copy_storage": opts.copy_storage})
        problems += list(checked.get("problems", []))
        if problems:
            raise InvalidConfig(f"Failed to migrate '{rec.name}' to '{opts.host}': "
                                + "; ".join(problems))
        tls_dir = self.m.paths.run / "migrations" / job.id
        was_running = rec.state == RUNNING
        try:
            async with Revert() as revert:
                # First in, so last out: a cancel while the destination prepares must
                # still make it drop what it made.
                revert.add(lambda: self._abort_remote_soon(peer, job))
                job.status = "preparing"
                target = await self._prepare_remote(job, peer, rec, record, facts, tls_dir)
                await drv.migrate(inst, target, opts, job)
                revert.add(lambda: drv.abort_migration(inst, target, was_running))
                try:
                    await self._commit(job, peer)
                except _Undecided:
                    # Maybe running there already: resuming here could run it twice, and
                    # aborting there could lose it. Stay paused; the message says what to
                    # check.
                    revert.success()
                    self.m.set_state(rec, PAUSED)
                    raise
                revert.success()
        finally:
            remove_psk_dir(tls_dir)
        await self.m.destroy_locked(rec)  # it runs there now
        raised = (f" (limit raised to {job.downtime_limit_ms} ms to converge)"
                  if job.downtime_limit_ms else "")
        job.message = (f"Migrated '{rec.name}' to '{opts.host}' in "
                       f"{(job.total_ms or 0) / 1000:.2f} s, downtime "
                       f"{job.downtime_ms} ms{raised}")

    async def _prepare_remote(self, job: MigrationJob, peer: PeerClient, rec: DomainRecord,
                              record: dict[str, Any], facts: dict[str, Any],
                              tls_dir: Path) -> MigrationTarget:
        """Have the destination start its paused copy, listening; where to send it."""
        opts = job.options
        psk = make_psk() if opts.tls else None
        disks = copied_disks(rec.config) if opts.copy_storage else []
        sizes = await asyncio.to_thread(self._disk_sizes, disks)
        # The destination listens on an IP literal of its own (admission.check_listen_host).
        listen = await asyncio.to_thread(ip_of, peer.host)
        prep = await peer.arequest("POST", "/v1/migrations/incoming", {
            "id": job.id, "record": record, "facts": facts,
            "copy_storage": opts.copy_storage, "disk_sizes": sizes,
            "psk": {"identity": psk[0], "key": psk[1]} if psk else None,
            "listen_host": listen, "paused": rec.state == PAUSED,
            "caps": {"postcopy-ram": opts.postcopy},
        }, timeout=120)
        if psk:
            write_psk_dir(tls_dir, *psk)
        return MigrationTarget(host=peer.host, port=int(prep["port"]),
                               nbd_port=int(prep["nbd_port"]) if opts.copy_storage else None,
                               tls_dir=tls_dir if psk else None,
                               psk_identity=psk[0] if psk else "", name=job.id[:8],
                               disks=[spec.vdev for spec in disks])

    def _disk_sizes(self, disks: list[DiskSpec]) -> dict[str, int]:
        sizes = {}
        for spec in disks:
            info = self.storage.image_info(diskdev.target_path(spec),
                                             diskdev.FORMATS[spec.format])
            sizes[spec.vdev] = int(info["virtual-size"])
        return sizes

    async def _commit(self, job: MigrationJob, peer: PeerClient) -> None:
        """Tell the destination to resume. Only a definite answer decides; if the peer
        cannot be reached, the domain stays paused here rather than maybe run twice."""
        deadline = time.monotonic() + COMMIT_TRIES_FOR
        last: XeniaError | None = None
        while time.monotonic() < deadline:
            try:
                await peer.arequest("POST", f"/v1/migrations/incoming/{job.id}/commit",
                                    timeout=30)
                return
            except Unreachable as e:
                last = e
                await asyncio.sleep(1)
        job.status = "failed"
        raise _Undecided(
            f"Failed to confirm the switch-over of '{job.domain}' with '{job.options.host}' "
            f"({last}); the domain is kept PAUSED here so it cannot run on both hosts: check "
            f"`xenia list` on that host, then destroy or unpause the right copy")

    async def _abort_remote_soon(self, peer: PeerClient, job: MigrationJob) -> None:
        """Wait for the destination to drop its copy (so "failed" means cleaned up there
        too); if it cannot be reached now, keep trying in the background."""
        if not await self._abort_remote(peer, job, tries=3):
            task = asyncio.get_running_loop().create_task(
                self._abort_remote(peer, job, tries=30))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _abort_remote(self, peer: PeerClient, job: MigrationJob, tries: int) -> bool:
        """Make the destination drop its copy; retried while the link is down."""
        for _ in range(tries):
            try:
                await peer.arequest("DELETE", f"/v1/migrations/incoming/{job.id}", timeout=10)
                return True
            except Unreachable:
                await asyncio.sleep(2)
            except XeniaError:
                return True  # it answered: nothing (more) to abort there
        return False


class _Undecided(BackendError):
    """The switch-over could not be confirmed: keep the source paused, never resume it."""


def ip_of(host: str) -> str:
    """`host` as an IP literal: itself if it is one, else the first address it resolves to."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return str(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0])
    except (OSError, IndexError) as e:
        raise Unreachable(f"Failed to resolve peer host '{host}': {e}") from e
