"""Receiver: the destination side of a live migration (Receiver, one per xeniad).

The source's xeniad drives everything over the authenticated peer API:
check -> prepare (the domain built with incoming="defer", the driver listening) -> the
stream -> commit (resume here) or abort (throw the half-received domain away). Until
commit the domain here stays paused, so the guest never runs on both hosts. What listens
and receives is the driver's (Driver.accept_migration, receive_migration,
finalize_migration); this module talks to the peer and the DomainManager's public
surface only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xenia.config.model import DomainConfig
from xenia.devices import disk as diskdev
from xenia.drivers.base import IncomingSetup
from xenia.errors import BackendError, InvalidConfig, NotFound, XeniaError
from xenia.migration import admission, preflight
from xenia.migration.records import arrived, copied_disks
from xenia.peers.psk import remove_psk_dir, write_psk_dir
from xenia.qemu.binary import machine_types, qemu_info
from xenia.revert import Revert
from xenia.storage import qemuimg
from xenia.store import schema
from xenia.store.base import DomainRecord

if TYPE_CHECKING:
    from xenia.drivers.base import Instance
    from xenia.host.manager import DomainManager
    from xenia.network.manager import NetworkManager

log = logging.getLogger(__name__)

# How long the destination waits for the source's commit once all state is here.
COMMIT_TIMEOUT = 120.0
# How long a prepared destination waits for the source's QEMU to connect.
CONNECT_TIMEOUT = 60.0


@dataclass
class Incoming:
    id: str
    uuid: str
    name: str
    state: str = "preparing"  # preparing, listening, received, committed, aborted, failed
    port: int = 0
    nbd_port: int = 0
    setup: IncomingSetup | None = None
    error: str = ""
    created_disks: list[Path] = field(default_factory=list)
    tls_dir: Path | None = None
    listening: asyncio.Future[None] | None = None
    received: asyncio.Event = field(default_factory=asyncio.Event)
    go: asyncio.Future[bool] | None = None
    task: asyncio.Task[DomainRecord] | None = None


class Receiver:
    def __init__(self, manager: DomainManager, network: NetworkManager) -> None:
        self.m = manager
        self.network = network
        self.jobs: dict[str, Incoming] = {}
        # xeniad --allow-plain-migration: accept a stream without TLS (docs/security.md).
        self.allow_plain = False
        # Aborts that came before (or instead of) their prepare: refuse it if it comes.
        self.aborted: set[str] = set()

    # -- check -----------------------------------------------------------------------------
    def check(self, record: dict[str, Any], facts: dict[str, Any],
              copy_storage: bool) -> list[str]:
        try:
            admission.check_arriving(record, "to accept the domain", machine_types)
            # A record from a sender of an older release is upgraded; a newer one refused.
            cfg = DomainConfig.from_dict(schema.upgrade_domain(record)["config"])
        except XeniaError as e:
            return [e.message]
        except (KeyError, TypeError, ValueError) as e:
            return [f"the domain record is unreadable ({e})"]
        recs = self.m.store.list()
        info = qemu_info()
        drv = self.m.drivers.get(cfg.type)
        if drv is None:
            return [f"this host runs no domains of type '{cfg.type}'"]
        accel = drv.host_info().get("accel", "tcg")

        def bridge_problem(vif: Any) -> str | None:
            try:
                self.network.check_vif(vif)
            except XeniaError as e:
                return e.message
            return None

        return preflight.check_destination(
            cfg, facts, my_accel=str(accel), my_qemu=info.version_text,
            my_machines=machine_types(), names={r.name for r in recs},
            uuids={r.uuid for r in recs}, uuid=str(record.get("uuid")),
            copy_storage=copy_storage, bridge_problem=bridge_problem)

    # -- prepare ---------------------------------------------------------------------------
    async def prepare(self, req: dict[str, Any]) -> dict[str, Any]:
        # The id names a directory here (the PSK's): a UUID, never a path.
        job_id = admission.check_uuid(req.get("id"), "the migration id",
                                      "to accept a migration")
        if not req.get("psk"):
            if req.get("copy_storage"):
                raise InvalidConfig(
                    "Failed to accept a migration with --copy-storage without TLS: the disks' "
                    "NBD export would take writes from anyone who reaches it; migrate "
                    "without --no-tls")
            if not self.allow_plain:
                raise InvalidConfig(
                    "Failed to accept a migration without TLS: this host requires an "
                    "encrypted stream; migrate without --no-tls, or start this host's "
                    "xeniad with --allow-plain-migration")
        if job_id in self.aborted:
            raise InvalidConfig(f"Failed to accept migration {job_id}: it was aborted")
        if job_id in self.jobs:
            raise InvalidConfig(f"Failed to accept migration {job_id}: it exists already")
        if not isinstance(req.get("record"), dict):
            raise InvalidConfig("Failed to accept a migration: it carries no domain record")
        record = dict(req["record"])
        await asyncio.to_thread(admission.check_arriving, record, "to accept the domain",
                                machine_types)
        # The request's other fields reach QEMU and the disk: checked as the record is.
        caps = admission.check_caps(req.get("caps"))
        host = admission.check_listen_host(req.get("listen_host"))
        problems = await asyncio.to_thread(self.check, record, req.get("facts", {}),
                                           bool(req.get("copy_storage")))
        if problems:
            raise InvalidConfig(f"Failed to accept '{record['config']['name']}' here: "
                                + "; ".join(problems))
        rec = arrived(record)
        sizes: dict[str, int] = {}
        if req.get("copy_storage"):
            sizes = await asyncio.to_thread(
                admission.check_disk_sizes, req.get("disk_sizes") or {},
                [(s.vdev, diskdev.target_path(s)) for s in copied_disks(rec.config)])
        job = Incoming(job_id, rec.uuid, rec.name)
        loop = asyncio.get_running_loop()
        job.listening, job.go = loop.create_future(), loop.create_future()
        async with Revert() as revert:
            self.jobs[job_id] = job
            revert.add(lambda: self.jobs.pop(job_id, None))
            revert.add(lambda: self._cleanup(job))
            if req.get("copy_storage"):
                await asyncio.to_thread(self._create_disks, rec.config, job, sizes)
            if req.get("psk"):
                job.tls_dir = self.m.paths.run / "migrations" / job_id
                write_psk_dir(job.tls_dir, req["psk"]["identity"], req["psk"]["key"])
            revert.success()
        job.setup = IncomingSetup(
            name=job_id[:8], listen_host=host, copy_storage=bool(req.get("copy_storage")),
            tls_dir=job.tls_dir, caps=caps,
            disks=[s.vdev for s in copied_disks(rec.config)] if req.get("copy_storage")
            else [])

        async def receive(inst: Instance) -> None:
            await self._receive(inst, job)

        job.task = loop.create_task(self.m.build(
            rec, paused=bool(req.get("paused")), incoming="defer", receive=receive,
            doing="receive"))
        job.task.add_done_callback(lambda t: self._finished(job, t))
        if job.state == "aborted":  # the abort overtook this prepare
            job.task.cancel()
        waiters: set[asyncio.Future[Any]] = {job.listening, job.task}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if job.listening.done() and not job.listening.exception():
            job.state = "listening"
            return {"port": job.port, "nbd_port": job.nbd_port}
        if job.task.cancelled():
            # Aborted by the source meanwhile: an answer, not a CancelledError, goes back.
            raise InvalidConfig(f"Failed to prepare the migration of '{rec.name}': the "
                                "source aborted it")
        exc = job.task.exception() if job.task.done() else job.listening.exception()
        raise exc or BackendError(f"Failed to prepare the migration of '{rec.name}'")

    def _create_disks(self, cfg: DomainConfig, job: Incoming, sizes: dict[str, int]) -> None:
        """Empty images of the source's formats and sizes, for the mirror to fill."""
        for spec in copied_disks(cfg):
            if spec.vdev not in sizes:
                raise InvalidConfig(f"Failed to copy disk {spec.vdev}: the source sent no size")
            path = diskdev.target_path(spec)
            # Made here, exclusively: preflight saw no file at the path, but one may have
            # appeared since (or a link); it is never written over, nor removed on undo.
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, 0o600))
            except FileExistsError as e:
                raise InvalidConfig(f"Failed to copy disk {spec.vdev}: {path} exists here "
                                    "already; --copy-storage will not overwrite it") from e
            except OSError as e:
                raise BackendError(f"Failed to copy disk {spec.vdev}: creating {path}: "
                                   f"{e.strerror}") from e
            job.created_disks.append(path)  # ours now: a half-made one goes too
            qemu_img_create(path, diskdev.FORMATS[spec.format], sizes[spec.vdev])

    async def _receive(self, inst: Instance, job: Incoming) -> None:
        """The build's receive step: listen, take the state in, wait for the commit.

        If it fails before listening, the build undoes itself and prepare() answers
        with the error once it has (it waits on the build too)."""
        assert job.listening is not None and job.go is not None and job.setup is not None
        drv = self.m.driver_for(inst.record.config)
        job.port, job.nbd_port = await drv.accept_migration(inst, job.setup)
        job.listening.set_result(None)
        await drv.receive_migration(inst, CONNECT_TIMEOUT)
        job.state = "received"
        job.received.set()
        ok = await asyncio.wait_for(job.go, COMMIT_TIMEOUT)
        if not ok:
            raise BackendError(f"Failed to receive {job.name}: the source aborted")

    # -- commit / abort --------------------------------------------------------------------
    def _job(self, job_id: str) -> Incoming:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"Failed to find incoming migration {job_id}")
        return job

    async def commit(self, job_id: str) -> dict[str, Any]:
        job = self._job(job_id)
        if job.state == "committed":
            return {"state": "committed"}
        if job.state == "listening":
            # The source saw its side complete; this side may need a moment to agree.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(job.received.wait(), 30)
        if job.state != "received":
            raise InvalidConfig(f"Failed to commit migration {job_id}: it is {job.state}")
        assert job.go is not None and job.task is not None
        if not job.go.done():
            job.go.set_result(True)
        rec = await job.task
        assert job.setup is not None
        # It runs here now: end the exports and tell the switches where the guest is.
        with contextlib.suppress(XeniaError):
            inst = self.m.instance(rec)
            await self.m.driver_for(rec.config).finalize_migration(inst, job.setup)
        job.state = "committed"
        return {"state": "committed", "domid": rec.domid}

    async def abort(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            self.aborted.add(job_id)
            return
        if job.state in ("committed", "aborted", "failed"):
            return
        job.state = "aborted"
        if job.go is not None and not job.go.done():
            job.go.set_result(False)
        if job.task is not None and not job.task.done():
            job.task.cancel()
            with contextlib.suppress(BaseException):
                await job.task

    def status(self, job_id: str) -> dict[str, Any]:
        job = self._job(job_id)
        return {"id": job.id, "state": job.state, "error": job.error, "name": job.name}

    def _finished(self, job: Incoming, task: asyncio.Task[DomainRecord]) -> None:
        if task.cancelled() or task.exception() is not None:
            if job.state not in ("aborted",):
                job.state = "failed"
            exc = None if task.cancelled() else task.exception()
            job.error = str(exc) if exc else "cancelled"
            if job.listening is not None and not job.listening.done():
                job.listening.set_exception(exc or BackendError("cancelled"))
            self._cleanup(job)
            log.info("incoming migration of %s ended: %s", job.name, job.error or job.state)
        elif job.tls_dir is not None:
            remove_psk_dir(job.tls_dir)

    def _cleanup(self, job: Incoming) -> None:
        if job.tls_dir is not None:
            remove_psk_dir(job.tls_dir)
        for path in job.created_disks:
            with contextlib.suppress(OSError):
                path.unlink()


def qemu_img_create(path: Path, fmt: str, size: int) -> None:
    doing = f"to create {path} for the incoming disk"
    # An absolute path after `--`: never an option or a protocol prefix (storage/qemuimg.py).
    res = subprocess.run(["qemu-img", "create", "-q", "-f", fmt, "--",
                          qemuimg.absolute(path, doing), str(size)],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise BackendError(f"Failed {doing}: {res.stderr.strip()}")

