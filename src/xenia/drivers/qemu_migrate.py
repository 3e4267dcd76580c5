"""The QMP side of save, restore and live migration of a QEMU domain (QemuDriver's verbs).

Source: TLS credentials (a one-time PSK the orchestration wrote), the disks mirrored
live to the destination's NBD exports (--copy-storage), then RAM pre-copy with its
convergence policy (auto-converge, post-copy, raising the downtime limit) until QEMU
completes the switch-over, or a rollback that leaves the guest running as before.
Destination: listen for the stream (and export the disks), wait until it is all here,
and once the domain runs, end the exports and announce its MACs.

migration/ (sender, receiver) drives this between hosts; it never sends QMP itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from xenia.drivers.base import IncomingSetup, MigrationOptions, MigrationReport, MigrationTarget
from xenia.errors import BackendError, InUse, Unreachable, XeniaError
from xenia.qemu import stream
from xenia.qemu.commands import Qmp, fd_address, inet_address
from xenia.revert import Revert

log = logging.getLogger(__name__)

# Saving to a local file: no reason to hold QEMU to its default 128 MiB/s network cap.
FILE_BANDWIDTH = 64 * 1024**3
# Plain pre-copy gives up after this many passes over memory without the remainder
# shrinking by a tenth (QEMU itself would go on forever).
MAX_PASSES = 10
# No bytes moved for this long: the link or the peer is gone (xeniad
# --migration-stall-timeout). A TCP retransmission after a brief loss comes within a few
# seconds; 15 s outlasts those and a slow peer's pauses.
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
# How long the source waits for its disk mirrors to be in sync.
MIRROR_TIMEOUT = 3600.0
# QEMU's run states in which a cancelled outgoing migration left the guest stopped.
STOPPED_BY_MIGRATION = ("postmigrate", "paused", "finish-migrate")


def tls_id(name: str) -> str:
    """The QEMU object of a migration's TLS credentials (one per migration: a domain may
    move again, and its previous object may not be gone yet)."""
    return f"mig-tls-{name}"


# -- save and restore -----------------------------------------------------------------------
# QEMU never gets a save file, its path or an fd of it (a guest that took its QEMU over
# could otherwise rewrite the file's header, or keep the fd and write later): it writes
# its stream into a pipe and reads it from one (`fd:` in the JSON channels form, as
# libvirt's iohelper does), and xeniad copies between the pipe and the file.
SAVE_FD = "xenia-save"
LOAD_FD = "xenia-load"
# After QEMU says the stream is complete it closes its end of the pipe at once; one
# that holds on to it this long is not trusted to have finished.
PIPE_CLOSE_TIMEOUT = 30.0
_CHUNK = 1 << 20


def _drain(pipe: int, fd: int, offset: int, stop: threading.Event) -> int:
    """Copy the pipe into `fd` from `offset` on, until QEMU closes its end (or `stop`)."""
    n = 0
    poll = select.poll()
    poll.register(pipe, select.POLLIN)
    while not stop.is_set():
        if not poll.poll(200):
            continue
        try:
            k = os.splice(pipe, fd, _CHUNK, offset_dst=offset + n, flags=os.SPLICE_F_NONBLOCK)
        except BlockingIOError:
            continue
        except OSError as e:  # the file's disk full, say
            raise BackendError(f"Failed to save: writing the state: {e}") from e
        if k == 0:
            return n
        n += k
    raise BackendError("Failed to save: QEMU kept the stream open after it ended")


def _feed(fd: int, pipe: int, offset: int, stop: threading.Event) -> None:
    """Copy `fd` from `offset` to its end into the pipe, until done, QEMU closes its
    end (it stops reading at the stream's end marker), or `stop`."""
    end = os.fstat(fd).st_size
    poll = select.poll()
    poll.register(pipe, select.POLLOUT)
    try:
        while offset < end and not stop.is_set():
            if not poll.poll(200):
                continue
            try:
                offset += os.splice(fd, pipe, min(_CHUNK, end - offset), offset_src=offset,
                                    flags=os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                continue
            except BrokenPipeError:
                return
    finally:
        os.close(pipe)


async def save(qmp: Qmp, path: Path, offset: int) -> None:
    """Stop the guest and write its state into `path` from `offset` on. Leaves QEMU
    stopped ("postmigrate"); on failure the guest runs on as before."""
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    stop = threading.Event()
    try:
        rd, wr = os.pipe2(os.O_CLOEXEC)
        try:
            copier = asyncio.ensure_future(asyncio.to_thread(_drain, rd, fd, offset, stop))
            try:
                await qmp.getfd(SAVE_FD, wr)
            finally:
                os.close(wr)  # QEMU holds the only write end now
            try:
                await _save(qmp, path)
            except XeniaError:
                cause = copier.exception() if copier.done() else None
                if cause is not None:
                    raise cause from None  # the cause, not QEMU's broken pipe
                raise
            finally:
                # Unused (a failure before migrate took it): QEMU closes it, the copy ends.
                with contextlib.suppress(XeniaError):
                    await qmp.closefd(SAVE_FD)
            try:
                await asyncio.wait_for(asyncio.shield(copier), PIPE_CLOSE_TIMEOUT)
            except TimeoutError:
                stop.set()
                await copier  # raises BackendError
        finally:
            stop.set()
            await asyncio.gather(copier, return_exceptions=True)
            os.close(rd)
    finally:
        os.close(fd)


async def _save(qmp: Qmp, path: Path) -> None:
    was_running = await qmp.query_status() == "running"
    async with Revert() as revert:
        await qmp.stop()
        if was_running:
            revert.add(qmp.cont)
        revert.add(lambda: cancel(qmp))
        await qmp.migrate_set_capabilities(auto_converge=False, postcopy_ram=False)
        await qmp.migrate_set_parameters(max_bandwidth=FILE_BANDWIDTH, tls_creds="")
        await qmp.migrate_to(fd_address(SAVE_FD))
        await stream.wait(qmp, what=f"saving to {path}")
        revert.success()


async def restore(qmp: Qmp, alive: Callable[[], bool], path: Path, offset: int) -> None:
    """On a QEMU started with -incoming defer: load the state from a save file."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    stop = threading.Event()
    feeder: asyncio.Future[None] | None = None
    try:
        rd, wr = os.pipe2(os.O_CLOEXEC)
        try:
            try:
                await qmp.getfd(LOAD_FD, rd)
            except BaseException:
                os.close(wr)
                raise
            feeder = asyncio.ensure_future(asyncio.to_thread(_feed, fd, wr, offset, stop))
        finally:
            os.close(rd)  # QEMU holds the only read end now
        await qmp.migrate_incoming_from(fd_address(LOAD_FD))
        # Polled often: a restore from a local file (a clone's start) takes a few hundred
        # ms, and each poll's wait is time the guest is not running yet.
        await stream.wait_incoming(qmp, alive, what=f"restoring from {path}", interval=0.01)
    finally:
        stop.set()
        if feeder is not None:
            await asyncio.gather(feeder, return_exceptions=True)
        os.close(fd)


async def cancel(qmp: Qmp) -> None:
    """Cancel an outgoing migration and wait until QEMU has settled (see stream)."""
    try:
        await stream.cancel(qmp)
    except XeniaError as e:
        log.warning("cancelling the migration: %s", e.message)


# -- source -------------------------------------------------------------------------------
async def check_source(qmp: Qmp, name: str) -> None:
    try:  # a just-cancelled migration may still be winding down in QEMU
        await stream.wait_settled(qmp, timeout=10)
    except BackendError as e:
        raise InUse(f"Failed to migrate '{name}': an earlier migration of it has not ended "
                    f"yet ({e.message}); retry in a moment") from e


async def send(qmp: Qmp, target: MigrationTarget, opts: MigrationOptions,
               report: MigrationReport, stall: float = STALL_SECONDS) -> None:
    """Mirror the target's disks with copy_storage, then pre-copy the RAM to `target`.
    Returns with the guest stopped here and all its state there; on failure (or a
    cancel) rolls back: the guest runs here as before."""
    resume = await qmp.query_status() == "running"
    tls = ""
    async with Revert() as revert:
        revert.add(lambda: rollback(qmp, target, resume))
        if target.tls_dir is not None:
            tls = tls_id(target.name)
            await qmp.object_add("tls-creds-psk", tls, endpoint="client",
                                 dir=str(target.tls_dir), username=target.psk_identity)
        mirrors: list[str] = []
        if opts.copy_storage and target.nbd_port is not None:
            report.status = "mirroring"
            mirrors = await mirror(qmp, target.disks, target.host, target.nbd_port, tls)
        report.status = "migrating"
        await precopy(qmp, report, opts, f"tcp:{target.host}:{target.port}", tls, stall)
        # The source QEMU is stopped now ("postmigrate"); the disks are in sync. The
        # mirrors end without pivoting: the disks stay the source's own.
        report.status = "completing"
        for m in mirrors:
            with contextlib.suppress(XeniaError):
                await qmp.block_job_cancel(m)
        if tls:
            with contextlib.suppress(XeniaError):
                await qmp.object_del(tls)
        revert.success()


async def mirror(qmp: Qmp, disks: list[str], host: str, port: int, tls: str) -> list[str]:
    """Start a blockdev-mirror of every disk to the destination's NBD exports and wait
    until all are in sync (READY); writes stay mirrored until the switch-over."""
    jobs = []
    for vdev in disks:
        node = f"drive-{vdev}"
        target = f"mig-{vdev}"
        nbd: dict[str, Any] = {"driver": "nbd", "node-name": target, "export": node,
                               "server": {"type": "inet", "host": host, "port": str(port)}}
        if tls:
            nbd["tls-creds"] = tls
        await qmp.blockdev_add(nbd)
        job_id = f"mirror-{vdev}"
        await qmp.blockdev_mirror(job_id, node, target, sync="full", auto_dismiss=True)
        jobs.append(job_id)
    deadline = time.monotonic() + MIRROR_TIMEOUT
    while jobs:
        state = {j["device"]: j for j in await qmp.query_block_jobs()}
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


async def precopy(qmp: Qmp, report: MigrationReport, opts: MigrationOptions, uri: str,
                  tls: str, stall: float = STALL_SECONDS) -> None:
    """Pre-copy the RAM to `uri` until QEMU completes the switch-over, watching that it
    moves and converges (the policy above)."""
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
    await qmp.migrate_set_capabilities(auto_converge=opts.auto_converge,
                                       postcopy_ram=opts.postcopy)
    await qmp.migrate_set_parameters(**params)
    await qmp.migrate(uri)
    last_moved, last_change = -1, time.monotonic()
    postcopy_started = False
    best_remaining: int | None = None
    best_at = 0  # the pass that last cut what remains by 10%
    downtime, raised_at = int(params["downtime-limit"]), 0
    may_raise = opts.auto_converge and opts.downtime_ms is None
    while True:
        raw = await qmp.query_migrate()
        prog = stream.Progress.from_qmp(raw)
        report.progress = asdict(prog)
        if prog.status == "completed":
            report.downtime_ms, report.total_ms = prog.downtime_ms, prog.total_ms
            return
        if prog.status in stream.FAILED:
            raise BackendError(f"Failed to migrate '{report.domain}': "
                               f"{raw.get('error-desc') or prog.status}")
        now = time.monotonic()
        if prog.transferred != last_moved:
            last_moved, last_change = prog.transferred, now
        elif now - last_change > stall:
            raise Unreachable(f"Failed to migrate '{report.domain}': nothing moved for "
                              f"{stall:.0f} s (network cut, or the destination "
                              "died); it keeps running here")
        if opts.postcopy and not postcopy_started and prog.passes >= POSTCOPY_AFTER_PASSES:
            await qmp.migrate_start_postcopy()
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
                await qmp.migrate_set_parameters(downtime_limit=downtime)
                report.downtime_limit_ms, raised_at = downtime, prog.passes
                log.info("migration of %s: throttled to %d%% and still not converging; "
                         "downtime limit raised to %d ms", report.domain, prog.throttle,
                         downtime)
            elif throttled_out and stuck > MAX_PASSES:
                rate = prog.dirty_rate * 4096 / 2**20
                how = (f"even with its vCPUs throttled to {prog.throttle}% and a "
                       f"downtime limit of {downtime} ms" if opts.auto_converge else
                       f"after {prog.passes} passes")
                retry = ("--postcopy, or a larger --downtime" if opts.auto_converge
                         else "--auto-converge or --postcopy, or a larger --downtime")
                raise BackendError(
                    f"Failed to migrate '{report.domain}': it does not converge {how} — "
                    f"the guest dirties memory at about {rate:.0f} MiB/s, as fast as "
                    f"the link carries it; retry with {retry}; the domain keeps "
                    "running here")
        await asyncio.sleep(0.1)


async def rollback(qmp: Qmp, target: MigrationTarget, resume: bool) -> None:
    """Undo an outgoing migration: cancel it and the mirrors, drop their NBD nodes and
    the TLS object, and run the guest again if it ran before."""
    await cancel(qmp)
    with contextlib.suppress(XeniaError):
        for job in await qmp.query_block_jobs():
            if str(job.get("device", "")).startswith("mirror-"):
                await qmp.block_job_cancel(str(job["device"]), force=True)
    with contextlib.suppress(XeniaError):
        for node in await qmp.query_named_block_nodes():
            if str(node.get("node-name", "")).startswith("mig-"):
                await qmp.blockdev_del(str(node["node-name"]))
    if target.tls_dir is not None:
        with contextlib.suppress(XeniaError):
            await qmp.object_del(tls_id(target.name))
    # A cancelled migration leaves QEMU as it was, except after the switch-over
    # began ("postmigrate"): then this is the only copy and it must run again.
    if resume and await qmp.query_status() in STOPPED_BY_MIGRATION:
        with contextlib.suppress(XeniaError):
            await qmp.cont()


# -- destination ------------------------------------------------------------------------------
def free_port(host: str) -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def accept(qmp: Qmp, setup: IncomingSetup) -> tuple[int, int]:
    """On a QEMU started with -incoming defer: TLS, NBD exports of the setup's disks
    (with copy_storage), and the migration listener; returns (port, NBD port or 0)."""
    tls = ""
    if setup.tls_dir is not None:
        tls = tls_id(setup.name)
        await qmp.object_add("tls-creds-psk", tls, endpoint="server", dir=str(setup.tls_dir))
    nbd_port = 0
    if setup.copy_storage:
        nbd_port = free_port(setup.listen_host)
        await qmp.nbd_server_start(setup.listen_host, nbd_port, tls)
        for vdev in setup.disks:
            await qmp.block_export_add({"type": "nbd", "id": f"exp-{vdev}",
                                        "node-name": f"drive-{vdev}",
                                        "name": f"drive-{vdev}", "writable": True})
    caps = setup.caps or {}
    if caps:
        await qmp.migrate_set_capabilities(**caps)
    if tls:
        await qmp.migrate_set_parameters(tls_creds=tls)
    # The JSON form: the host (an IP of this host, admission.check_listen_host) is never
    # spliced into a URI, and an IPv6 one needs no brackets.
    await qmp.migrate_incoming_from(inet_address(setup.listen_host, 0))
    info = await qmp.query_migrate()
    return int(info["socket-address"][0]["port"]), nbd_port


async def finalize(qmp: Qmp, setup: IncomingSetup) -> None:
    """After the domain resumed here: end the NBD export and the TLS object, and tell
    the switches where the guest is now (announce-self)."""
    if setup.copy_storage:
        with contextlib.suppress(XeniaError):
            await qmp.nbd_server_stop()
    if setup.tls_dir is not None:
        with contextlib.suppress(XeniaError):
            await qmp.object_del(tls_id(setup.name))
    with contextlib.suppress(XeniaError):
        await qmp.announce_self(initial=50, max_ms=550, rounds=5, step=100)
