"""Sender: the source side of a live migration (MigrationJob, driven by the DomainManager).

Order: pre-flight here and at the destination (all problems reported at once) -> the
destination prepares a paused QEMU listening for the stream -> (--copy-storage) disks
mirrored live over NBD -> RAM pre-copy (auto-converge, post-copy on request) -> on
completion the destination resumes and the source's QEMU is destroyed. Any failure before
the destination resumed leaves the source running and tells the destination to throw its
copy away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid as uuidlib
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from xenia.devices import disk as diskdev
from xenia.errors import BackendError, InUse, InvalidConfig, Unreachable, XeniaError
from xenia.migration import preflight, stream
from xenia.peers.client import PeerClient
from xenia.peers.psk import make_psk, remove_psk_dir, write_psk_dir
from xenia.peers.secrets import PeerTokenFiles

if TYPE_CHECKING:
    from xenia.drivers.qemu import QemuInstance
    from xenia.host.manager import DomainManager
    from xenia.store.base import DomainRecord

log = logging.getLogger(__name__)

# Plain pre-copy gives up after this many passes over memory without the remainder
# shrinking by a tenth (QEMU itself would go on forever).
MAX_PASSES = 10
# No bytes moved for this long: the link or the peer is gone.
STALL_SECONDS = 15.0
POSTCOPY_AFTER_PASSES = 2
# Xenia's default downtime limit. QEMU's own is 300 ms; measured here an idle 256 MiB
# guest moves with 76-93 ms of downtime at QEMU's default and 3-12 ms at 30 ms, for the
# same total time (docs/decisions.md).
DEFAULT_DOWNTIME_MS = 30
# --auto-converge without --downtime: once the vCPUs are throttled as far as QEMU goes
# (max-cpu-throttle, 99% by default) and RAISE_EVERY passes went by, the downtime limit
# doubles, up to AUTO_DOWNTIME_CAP_MS (as Proxmox does). Under TCG a 99%-throttled guest
# still dirtied 1-4 MiB/s here, so at 30 ms the switch-over waited on luck: 29-267 s.
MAX_THROTTLE = 99
RAISE_EVERY = 5
AUTO_DOWNTIME_CAP_MS = 1000


@dataclass
class MigrationOptions:
    host: str
    copy_storage: bool = False
    downtime_ms: int | None = None
    bandwidth_mibs: int | None = None
    postcopy: bool = False
    auto_converge: bool = False
    tls: bool = True


@dataclass
class MigrationJob:
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
    def __init__(self, manager: DomainManager) -> None:
        self.m = manager
        self.jobs: dict[str, MigrationJob] = {}
        self._background: set[asyncio.Task[bool]] = set()

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
        peer = PeerClient.from_store(self.m.store, opts.host,
                                     PeerTokenFiles(self.m.paths.peer_tokens))
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
            async with self.m._lock(job.uuid):
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
        inst: QemuInstance = self.m.instance(rec)  # type: ignore[assignment]
        info = self.m.host_info()
        accel = str(rec.runtime.get("accel", info.get("accel")))
        qver = str(info.get("qemu_version"))
        problems = preflight.check_source(rec.config, rec.state, accel, qver, live=True)
        try:  # a just-cancelled migration may still be winding down in QEMU
            await stream.wait_settled(inst.proc, timeout=10)
        except BackendError as e:
            raise InUse(f"Failed to migrate '{rec.name}': an earlier migration of it has "
                        f"not ended yet ({e.message}); retry in a moment") from e
        portable = self.m.portable(rec)
        facts = preflight.source_facts(portable, accel, qver)
        try:
            remote = await peer.arequest("GET", "/v1/host", timeout=10)
        except XeniaError as e:
            raise type(e)(f"Failed to migrate '{rec.name}' to '{opts.host}': {e.message}") \
                from e
        del remote
        checked = await peer.arequest("POST", "/v1/migrations/check", {
            "record": portable, "facts": facts, "copy_storage": opts.copy_storage})
        problems += list(checked.get("problems", []))
        if problems:
            raise InvalidConfig(f"Failed to migrate '{rec.name}' to '{opts.host}': "
                                + "; ".join(problems))
        tls_dir = self.m.paths.run / "migrations" / job.id
        tls_id = f"mig-tls-{job.id[:8]}"  # one per migration: a domain may move again
        mirrors: list[str] = []
        committed = False
        was_running = rec.state == "running"
        try:
            # Inside the try: a cancel while the destination prepares must still abort it.
            job.status = "preparing"
            psk = make_psk() if opts.tls else None
            sizes = await asyncio.to_thread(self._disk_sizes, rec) if opts.copy_storage else {}
            caps = {"postcopy-ram": opts.postcopy}
            prep = await peer.arequest("POST", "/v1/migrations/incoming", {
                "id": job.id, "record": portable, "facts": facts,
                "copy_storage": opts.copy_storage, "disk_sizes": sizes,
                "psk": {"identity": psk[0], "key": psk[1]} if psk else None,
                "listen_host": peer.host, "paused": rec.state == "paused", "caps": caps,
            }, timeout=120)
            tls = ""
            if psk:
                write_psk_dir(tls_dir, *psk)
                await inst.proc.command("object-add", {
                    "qom-type": "tls-creds-psk", "id": tls_id, "endpoint": "client",
                    "dir": str(tls_dir), "username": psk[0]})
                tls = tls_id
            if opts.copy_storage:
                job.status = "mirroring"
                mirrors = await self._mirror(inst, rec, peer.host, int(prep["nbd_port"]), tls)
            job.status = "migrating"
            await self._precopy(job, inst, opts, f"tcp:{peer.host}:{prep['port']}", tls)
            # The source QEMU is stopped now ("postmigrate"); the disks are in sync.
            job.status = "completing"
            for m in mirrors:
                with contextlib.suppress(XeniaError):
                    await inst.proc.command("block-job-cancel", {"device": m})
            committed = await self._commit(job, peer)
        except _Undecided:
            # Maybe running there already: resuming here could run it twice, and aborting
            # there could lose it. Stay paused; the message says what to check.
            rec.state = "paused"
            self.m._save(rec)
            raise
        except BaseException:
            await self._undo_source(inst, mirrors, was_running)
            # Wait for the destination to drop its copy (so "failed" means cleaned up
            # there too); if it cannot be reached now, keep trying in the background.
            if not await self._abort_remote(peer, job, tries=3):
                task = asyncio.get_running_loop().create_task(
                    self._abort_remote(peer, job, tries=30))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            raise
        finally:
            remove_psk_dir(tls_dir)
            with contextlib.suppress(XeniaError):
                await inst.proc.command("object-del", {"id": tls_id})
        if committed:
            await self.m._destroy_locked(rec)
            raised = (f" (limit raised to {job.downtime_limit_ms} ms to converge)"
                      if job.downtime_limit_ms else "")
            job.message = (f"Migrated '{rec.name}' to '{opts.host}' in "
                           f"{(job.total_ms or 0) / 1000:.2f} s, downtime "
                           f"{job.downtime_ms} ms{raised}")

    def _disk_sizes(self, rec: DomainRecord) -> dict[str, int]:
        sizes = {}
        for spec in rec.config.disks:
            if diskdev.is_empty(spec) or spec.is_cdrom:
                continue
            info = self.m.storage.image_info(diskdev.target_path(spec),
                                             diskdev.FORMATS[spec.format])
            sizes[spec.vdev] = int(info["virtual-size"])
        return sizes

    async def _mirror(self, inst: QemuInstance, rec: DomainRecord, host: str, port: int,
                      tls: str) -> list[str]:
        """Start a blockdev-mirror of every disk to the destination's NBD exports and wait
        until all are in sync (READY); writes stay mirrored until the switch-over."""
        jobs = []
        for spec in rec.config.disks:
            if diskdev.is_empty(spec) or spec.is_cdrom:
                continue
            node = f"drive-{spec.vdev}"
            target = f"mig-{spec.vdev}"
            nbd: dict[str, Any] = {"driver": "nbd", "node-name": target, "export": node,
                                   "server": {"type": "inet", "host": host,
                                              "port": str(port)}}
            if tls:
                nbd["tls-creds"] = tls
            await inst.proc.command("blockdev-add", nbd)
            job_id = f"mirror-{spec.vdev}"
            await inst.proc.command("blockdev-mirror", {
                "job-id": job_id, "device": node, "target": target, "sync": "full",
                "auto-dismiss": True})
            jobs.append(job_id)
        deadline = time.monotonic() + 3600
        while jobs:
            state = {j["device"]: j for j in await inst.proc.command("query-block-jobs")}
            missing = [j for j in jobs if j not in state]
            if missing:
                raise BackendError(f"Failed to copy the disks: mirror {missing[0]} stopped "
                                   "(the destination's NBD export went away?)")
            if all(state[j].get("ready") for j in jobs):
                return jobs
            if time.monotonic() > deadline:
                raise BackendError("Failed to copy the disks: not in sync after an hour")
            await asyncio.sleep(0.1)
        return jobs

    async def _precopy(self, job: MigrationJob, inst: QemuInstance, opts: MigrationOptions,
                       uri: str, tls: str) -> None:
        params: dict[str, Any] = {"tls-creds": tls}
        params["downtime-limit"] = (opts.downtime_ms if opts.downtime_ms is not None
                                    else DEFAULT_DOWNTIME_MS)
        if opts.bandwidth_mibs is not None:
            params["max-bandwidth"] = opts.bandwidth_mibs * 1024 * 1024
        if opts.auto_converge:
            # QEMU's 20% + 10% a pass needs 8 passes to reach its 99% cap; a guest that
            # outruns the link is better slowed hard and briefly than mildly for long.
            params["cpu-throttle-initial"] = 40
            params["cpu-throttle-increment"] = 20
        await stream.set_caps(inst.proc, auto_converge=opts.auto_converge,
                              postcopy_ram=opts.postcopy)
        await stream.set_params(inst.proc, **{k.replace("-", "_"): v
                                              for k, v in params.items()})
        await inst.proc.command("migrate", {"uri": uri})
        last_moved, last_change = -1, time.monotonic()
        postcopy_started = False
        best_remaining: int | None = None
        best_at = 0  # the pass that last cut what remains by 10%
        downtime, raised_at = int(params["downtime-limit"]), 0
        may_raise = opts.auto_converge and opts.downtime_ms is None
        while True:
            raw = await inst.proc.command("query-migrate")
            prog = stream.Progress.from_qmp(raw)
            job.progress = asdict(prog)
            if prog.status == "completed":
                job.downtime_ms, job.total_ms = prog.downtime_ms, prog.total_ms
                return
            if prog.status in stream.FAILED:
                raise BackendError(f"Failed to migrate '{job.domain}': "
                                   f"{raw.get('error-desc') or prog.status}")
            now = time.monotonic()
            if prog.transferred != last_moved:
                last_moved, last_change = prog.transferred, now
            elif now - last_change > STALL_SECONDS:
                raise Unreachable(f"Failed to migrate '{job.domain}': nothing moved for "
                                  f"{STALL_SECONDS:.0f} s (network cut, or the destination "
                                  "died); it keeps running here")
            if opts.postcopy and not postcopy_started and prog.passes >= POSTCOPY_AFTER_PASSES:
                await inst.proc.command("migrate-start-postcopy")
                postcopy_started = True
            if prog.status == "active" and prog.passes > 1 and not opts.postcopy:
                if best_remaining is None or prog.remaining < best_remaining * 0.9:
                    best_remaining, best_at = prog.remaining, prog.passes
                # Passes without progress since the last progress or the last raise.
                stuck = prog.passes - max(raised_at, best_at)
                throttled_out = not opts.auto_converge or prog.throttle >= MAX_THROTTLE
                if (may_raise and throttled_out and downtime < AUTO_DOWNTIME_CAP_MS
                        and stuck >= RAISE_EVERY):
                    downtime = min(downtime * 2, AUTO_DOWNTIME_CAP_MS)
                    await stream.set_params(inst.proc, downtime_limit=downtime)
                    job.downtime_limit_ms, raised_at = downtime, prog.passes
                    log.info("migration of %s: throttled to %d%% and still not converging; "
                             "downtime limit raised to %d ms", job.domain, prog.throttle,
                             downtime)
                elif throttled_out and stuck > MAX_PASSES:
                    rate = prog.dirty_rate * 4096 / 2**20
                    how = (f"even with its vCPUs throttled to {prog.throttle}% and a "
                           f"downtime limit of {downtime} ms" if opts.auto_converge else
                           f"after {prog.passes} passes")
                    retry = ("--postcopy, or a larger --downtime" if opts.auto_converge
                             else "--auto-converge or --postcopy, or a larger --downtime")
                    raise BackendError(
                        f"Failed to migrate '{job.domain}': it does not converge {how} — "
                        f"the guest dirties memory at about {rate:.0f} MiB/s, as fast as "
                        f"the link carries it; retry with {retry}; the domain keeps "
                        "running here")
            await asyncio.sleep(0.1)

    async def _commit(self, job: MigrationJob, peer: PeerClient) -> bool:
        """Tell the destination to resume. Only a definite answer decides; if the peer
        cannot be reached, the domain stays paused here rather than maybe run twice."""
        deadline = time.monotonic() + 20
        last: XeniaError | None = None
        while time.monotonic() < deadline:
            try:
                await peer.arequest("POST", f"/v1/migrations/incoming/{job.id}/commit",
                                    timeout=30)
                return True
            except Unreachable as e:
                last = e
                await asyncio.sleep(1)
        job.status = "failed"
        raise _Undecided(
            f"Failed to confirm the switch-over of '{job.domain}' with '{job.options.host}' "
            f"({last}); the domain is kept PAUSED here so it cannot run on both hosts: check "
            f"`xenia list` on that host, then destroy or unpause the right copy")

    async def _undo_source(self, inst: QemuInstance, mirrors: list[str],
                           was_running: bool) -> None:
        await inst.cancel_migration()
        for m in mirrors:
            with contextlib.suppress(XeniaError):
                await inst.proc.command("block-job-cancel", {"device": m, "force": True})
        with contextlib.suppress(XeniaError):
            for spec in (n for n in await inst.proc.command("query-named-block-nodes")
                         if str(n.get("node-name", "")).startswith("mig-")):
                await inst.proc.command("blockdev-del", {"node-name": spec["node-name"]})
        # A cancelled migration leaves QEMU as it was, except after the switch-over
        # began ("postmigrate"): then this is the only copy and it must run again.
        status = await inst.status()
        if was_running and status in ("postmigrate", "paused", "finish-migrate"):
            with contextlib.suppress(XeniaError):
                await inst.proc.command("cont")

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
