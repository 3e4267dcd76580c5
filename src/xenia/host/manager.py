"""DomainManager: the host engine — lifecycle, guest events, on_poweroff/on_reboot/on_crash.

Every state change is written to the store before it is acted on. Domains are identified
by UUID internally; users name them by name, domid or UUID (`resolve`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from xenia.config.model import DiskSpec, DomainConfig, VifSpec
from xenia.drivers.base import Driver, GuestEvents, Instance
from xenia.errors import (
    AlreadyExists,
    BackendError,
    InUse,
    InvalidConfig,
    NotFound,
    TimedOut,
    XeniaError,
)
from xenia.host import hostinfo
from xenia.host.pci import PciAssign, normalize_bdf
from xenia.host.validate import check_config, check_name
from xenia.migration.receiver import Receiver
from xenia.migration.savefile import verify as verify_savefile
from xenia.migration.sender import Sender
from xenia.network.manager import NetworkManager
from xenia.paths import Paths
from xenia.storage.manager import StorageManager
from xenia.store.base import DomainRecord, Store

log = logging.getLogger(__name__)
T = TypeVar("T")

DOM0_NAME = "Domain-0"
# xl's six state columns: running, blocked, paused, shutdown, crashed, dying.
STATE_COLUMNS = "rbpscd"


def state_letters(state: str, running_now: bool) -> str:
    letter = {
        "running": "r" if running_now else "b",
        "paused": "p",
        "shutdown": "s",
        "crashed": "c",
        "dying": "d",
    }.get(state)
    if letter is None:
        return "-" * 6
    return "".join(c if c == letter else "-" for c in STATE_COLUMNS)


class DomainManager:
    def __init__(self, paths: Paths, store: Store, drivers: list[Driver],
                 storage: StorageManager | None = None,
                 network: NetworkManager | None = None) -> None:
        self.paths = paths
        self.store = store
        self.storage = storage or StorageManager(paths, store)
        self.pci = PciAssign(store)
        self.sender = Sender(self)
        self.receiver = Receiver(self)
        self.network = network or NetworkManager(paths, store)
        self.drivers = {t: d for d in drivers for t in d.types}
        self._inst: dict[str, Instance] = {}
        self._gone: dict[str, asyncio.Event] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._create_lock = asyncio.Lock()
        # Set when the build of a domain (create, restore, incoming migration) has ended.
        self._built: dict[str, asyncio.Event] = {}

    # -- helpers -------------------------------------------------------------------------
    def driver_for(self, cfg: DomainConfig) -> Driver:
        drv = self.drivers.get(cfg.type)
        if drv is None:
            raise InvalidConfig(
                f"Failed to create domain '{cfg.name}': no driver for type '{cfg.type}' "
                f"(known: {', '.join(sorted(self.drivers))})"
            )
        return drv

    def _lock(self, uuid: str) -> asyncio.Lock:
        return self._locks.setdefault(uuid, asyncio.Lock())

    def resolve(self, ref: str | int) -> DomainRecord:
        """A domain by name, domid or UUID, as xl accepts them."""
        ref = str(ref)
        recs = self.store.list()
        for rec in recs:
            if rec.name == ref or rec.uuid == ref.lower():
                return rec
        if ref.isdigit():
            for rec in recs:
                if rec.domid == int(ref):
                    return rec
        if ref in (DOM0_NAME, "0"):
            raise InvalidConfig(f"Failed to find domain '{ref}': Domain-0 is the host itself")
        raise NotFound(f"Failed to find domain '{ref}': no such domain (see `xenia list`)")

    def instance(self, rec: DomainRecord) -> Instance:
        inst = self._inst.get(rec.uuid)
        if inst is None or not inst.alive:
            raise BackendError(f"Failed to reach domain '{rec.name}': its process is not running")
        return inst

    def _save(self, rec: DomainRecord) -> None:
        self.store.put(rec)

    # -- startup / shutdown of the daemon ------------------------------------------------
    async def adopt_all(self) -> None:
        """Re-attach to every domain in the store; forget those whose process is gone."""
        for rec in self.store.list():
            drv = self.drivers.get(rec.config.type)
            inst = None
            if drv is not None:
                try:
                    inst = await drv.adopt(rec, self._events_for(rec.uuid))
                except XeniaError as e:
                    log.warning("could not adopt %s: %s", rec.name, e)
            if inst is not None and rec.state == "creating":
                # Half-built when the last daemon died (a create, restore or incoming
                # migration): nobody can finish it, so it goes.
                log.warning("domain %s was still being built; removing it", rec.name)
                with contextlib.suppress(Exception):
                    await inst.destroy()
                inst = None
            if inst is None:
                log.warning("domain %s (%s) is gone; removing its record", rec.name, rec.uuid)
                self._forget(rec)
                continue
            self._inst[rec.uuid] = inst
            self._gone[rec.uuid] = asyncio.Event()
            if rec.state == "dying":  # a destroy was cut short: finish it
                await self._destroy_locked(rec)
                continue
            self._save(rec)
            log.info("adopted domain %s (domid %d, pid %s)", rec.name, rec.domid,
                     rec.runtime.get("pid"))
            await self._catch_up(rec, inst)

    async def _catch_up(self, rec: DomainRecord, inst: Instance) -> None:
        """Apply a guest event that happened while no daemon was watching."""
        status = await self._status(inst)
        if rec.state == "running" and status == "shutdown":
            await self._on_guest_event(rec.uuid, "poweroff", {"reason": "while-daemon-down"})
        elif rec.state == "running" and status == "guest-panicked":
            await self._on_guest_event(rec.uuid, "crash", {})
        elif status in ("paused", "running"):
            async with self._lock(rec.uuid):
                # Reread: an event of the adopted instance (its boot watch's verdict, say)
                # may have been applied while query-status was under way.
                rec = self.store.get(rec.uuid) or rec
                if {rec.state, status} == {"running", "paused"}:
                    rec.state = status
                    self._save(rec)

    async def _status(self, inst: Instance) -> str | None:
        proc = getattr(inst, "proc", None)
        if proc is None:
            return None
        with contextlib.suppress(XeniaError):
            st = await proc.command("query-status")
            return str(st.get("status"))
        return None

    async def detach_all(self) -> None:
        for inst in list(self._inst.values()):
            with contextlib.suppress(Exception):
                await inst.detach()
        self._inst.clear()

    def _forget(self, rec: DomainRecord) -> None:
        drv = self.drivers.get(rec.config.type)
        if drv is not None:
            try:
                drv.release(rec)
            except XeniaError as e:
                log.warning("domain %s: cleaning up its host side failed: %s", rec.name, e)
        self.store.delete(rec.uuid)
        self._inst.pop(rec.uuid, None)
        ev = self._gone.pop(rec.uuid, None)
        if ev is not None:
            ev.set()
        # Leftovers of a domain that died while no daemon watched.
        run_dir = self.paths.domain_run(rec.uuid)
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)

    # -- create --------------------------------------------------------------------------
    async def create(self, cfg: DomainConfig, paused: bool = False) -> DomainRecord:
        check_config(cfg)
        rec = DomainRecord(
            uuid=(cfg.uuid or str(uuidlib.uuid4())).lower(),
            name=cfg.name,
            domid=0,
            config=cfg,
            state="creating",
            created_at=time.time(),
        )
        return await self.build(rec, paused=paused)

    async def build(self, rec: DomainRecord, *, paused: bool = False,
                    incoming: str | None = None,
                    receive: Callable[[Instance], Awaitable[None]] | None = None,
                    doing: str = "create") -> DomainRecord:
        """Admit a new domain record (checks, domid, placement), start it, and run it.

        With `incoming`, QEMU waits for a state instead of booting and `receive(instance)`
        feeds it (restore, migration) before the domain is resumed. On any failure
        nothing is left: no process, no host-side device, no record.
        """
        cfg = rec.config
        drv = self.driver_for(cfg)
        async with self._create_lock:
            for other in self.store.list():
                if other.name == rec.name:
                    raise AlreadyExists(
                        f"Failed to {doing} domain '{rec.name}': a domain with that name "
                        f"exists already (domid {other.domid}); pick another name or destroy "
                        "it first"
                    )
                if other.uuid == rec.uuid:
                    raise AlreadyExists(
                        f"Failed to {doing} domain '{rec.name}': domain '{other.name}' has "
                        f"UUID {other.uuid} already"
                    )
            await asyncio.to_thread(drv.check, rec)
            rec.domid = self.store.next_domid()
            drv.prepare(rec)
            self._save(rec)  # written before acted on: a crash now leaves a record to reap
        built = self._built[rec.uuid] = asyncio.Event()
        try:
            return await self._start(rec, drv, paused, incoming, receive)
        except BaseException:
            self.store.delete(rec.uuid)
            raise
        finally:
            built.set()
            if self._built.get(rec.uuid) is built:
                del self._built[rec.uuid]

    async def _start(self, rec: DomainRecord, drv: Driver, paused: bool,
                     incoming: str | None = None,
                     receive: Callable[[Instance], Awaitable[None]] | None = None
                     ) -> DomainRecord:
        inst = await drv.start(rec, self._events_for(rec.uuid), incoming=incoming)
        self._inst[rec.uuid] = inst
        self._gone[rec.uuid] = asyncio.Event()
        try:
            if receive is not None:
                await receive(inst)
            if not paused:
                await inst.resume()
        except BaseException:
            self._inst.pop(rec.uuid, None)
            self._gone.pop(rec.uuid, None)
            with contextlib.suppress(Exception):
                await inst.destroy()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(drv.release, rec)
            raise
        rec.state = "paused" if paused else "running"
        rec.started_at = time.time()
        self._save(rec)
        log.info("started domain %s (domid %d)", rec.name, rec.domid)
        return rec

    # -- guest events --------------------------------------------------------------------
    def _events_for(self, uuid: str) -> GuestEvents:
        async def handler(kind: str, data: dict[str, Any]) -> None:
            await self._on_guest_event(uuid, kind, data)

        return handler

    async def _on_guest_event(self, uuid: str, kind: str, data: dict[str, Any]) -> None:
        async with self._lock(uuid):
            rec = self.store.get(uuid)
            # A crash already preserved is reported again by an adopted boot watch.
            if rec is None or rec.state == "dying" or (kind == "crash" and
                                                       rec.state == "crashed"):
                return
            if rec.state == "creating":
                # Still being built (create, restore, incoming migration): wait for the
                # build's end. If it failed it removed everything; on_crash must not act
                # then (restarting a half-received domain would boot a fresh copy beside
                # the source's guest). If it succeeded, the exit counts as for any domain.
                built = self._built.get(uuid)
                if built is not None:
                    await built.wait()
                rec = self.store.get(uuid)
                if rec is None or rec.state in ("creating", "dying"):
                    log.info("domain %s: %s while being built; the build cleaned up",
                             rec.name if rec else uuid, kind)
                    return
            cfg = rec.config
            if kind == "exited":
                inst = self._inst.get(uuid)
                tail = inst.log_tail() if inst is not None else ""
                log.warning("domain %s: its process exited unexpectedly%s", rec.name,
                            ":\n" + tail if tail else "")
                action = cfg.on_crash
                if action.endswith("restart") or action == "soft-reset":
                    await self._relaunch(rec)
                else:
                    self._forget(rec)
                return
            action = {"poweroff": cfg.on_poweroff, "reboot": cfg.on_reboot,
                      "crash": cfg.on_crash}[kind]
            log.info("domain %s: guest %s, applying %s", rec.name, kind, action)
            await self._apply(rec, kind, action)

    async def _apply(self, rec: DomainRecord, kind: str, action: str) -> None:
        inst = self._inst.get(rec.uuid)
        if inst is None:
            return
        if action.startswith("coredump-"):
            path = self.paths.state / "dump" / f"{rec.name}-{time.strftime('%Y%m%dT%H%M%S')}.core"
            try:
                await inst.dump_core(path)
                log.info("domain %s: core dumped to %s", rec.name, path)
            except XeniaError as e:
                log.warning("domain %s: core dump failed: %s", rec.name, e)
            action = action.removeprefix("coredump-")
        if action == "destroy":
            await self._destroy_locked(rec)
        elif action in ("restart", "soft-reset"):
            await inst.reset()
            rec.state = "running"
            rec.started_at = time.time()
            self._save(rec)
        elif action == "preserve":
            rec.state = "crashed" if kind == "crash" else "shutdown"
            self._save(rec)
        elif action == "rename-restart":
            # As xl: the stopped domain keeps running state under a suffixed name, and a
            # new domain with the original name starts from the same config.
            cfg = DomainConfig.from_dict(rec.config.to_dict())
            rec.name = f"{rec.name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            rec.state = "crashed" if kind == "crash" else "shutdown"
            self._save(rec)
            cfg.uuid = None
            # The preserved domain keeps its NICs and their MACs; the new one gets its own.
            for vif in cfg.vifs:
                vif.mac = None
                vif.devid = None
            asyncio.get_running_loop().create_task(self._create_logged(cfg))

    async def _create_logged(self, cfg: DomainConfig) -> None:
        try:
            await self.create(cfg)
        except XeniaError as e:
            log.error("rename-restart of %s failed: %s", cfg.name, e)

    async def _relaunch(self, rec: DomainRecord) -> None:
        inst = self._inst.pop(rec.uuid, None)
        if inst is not None:
            with contextlib.suppress(Exception):
                await inst.destroy()
        drv = self.driver_for(rec.config)
        with contextlib.suppress(XeniaError):
            await asyncio.to_thread(drv.release, rec)  # the dead QEMU's taps and cgroup
        try:
            await self._start(rec, drv, paused=False)
        except XeniaError as e:
            log.error("restart of %s failed: %s", rec.name, e)
            self._forget(rec)

    # -- verbs ---------------------------------------------------------------------------
    async def destroy(self, ref: str) -> None:
        rec = self.resolve(ref)
        async with self._lock(rec.uuid):
            rec = self.store.get(rec.uuid) or rec
            await self._destroy_locked(rec)

    async def _destroy_locked(self, rec: DomainRecord) -> None:
        rec.state = "dying"
        self._save(rec)
        inst = self._inst.get(rec.uuid)
        if inst is not None:
            await inst.destroy()
        self._forget(rec)
        log.info("destroyed domain %s", rec.name)

    async def shutdown(self, ref: str, wait: bool = False) -> None:
        rec = self.resolve(ref)
        if rec.state in ("shutdown", "crashed"):
            raise InvalidConfig(
                f"Failed to shut down domain '{rec.name}': it is {rec.state} already "
                "(preserved); use `xenia destroy`"
            )
        inst = self.instance(rec)
        if rec.state == "paused":
            raise InvalidConfig(
                f"Failed to shut down domain '{rec.name}': it is paused and cannot see the "
                "power button; unpause it first"
            )
        await inst.power_button()
        if wait:
            await self.wait_stopped(rec.uuid)

    async def wait_stopped(self, uuid: str, timeout: float | None = None) -> None:
        """Until the domain is gone, or preserved in shutdown/crashed state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rec = self.store.get(uuid)
            if rec is None or rec.state in ("shutdown", "crashed"):
                return
            ev = self._gone.get(uuid)
            if ev is None:
                return
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimedOut(f"Failed waiting for domain '{rec.name}' to stop: it is "
                               f"still {rec.state} after {timeout:g} s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(ev.wait(), min(left or 0.5, 0.5))

    async def reboot(self, ref: str, force: bool = False) -> None:
        rec = self.resolve(ref)
        inst = self.instance(rec)
        if rec.state != "running":
            raise InvalidConfig(f"Failed to reboot domain '{rec.name}': it is {rec.state}")
        await inst.request_reboot(force)

    async def pause(self, ref: str) -> None:
        rec = self.resolve(ref)
        async with self._lock(rec.uuid):
            rec = self.store.get(rec.uuid) or rec
            if rec.state != "running":
                raise InvalidConfig(f"Failed to pause domain '{rec.name}': it is {rec.state}")
            rec.state = "paused"
            self._save(rec)
            try:
                await self.instance(rec).pause()
            except BaseException:
                rec.state = "running"
                self._save(rec)
                raise

    async def unpause(self, ref: str) -> None:
        rec = self.resolve(ref)
        async with self._lock(rec.uuid):
            rec = self.store.get(rec.uuid) or rec
            if rec.state != "paused":
                raise InvalidConfig(f"Failed to unpause domain '{rec.name}': it is {rec.state}")
            rec.state = "running"
            self._save(rec)
            try:
                await self.instance(rec).resume()
            except BaseException:
                rec.state = "paused"
                self._save(rec)
                raise

    async def rename(self, ref: str, new_name: str) -> DomainRecord:
        check_name(new_name)
        rec = self.resolve(ref)
        async with self._create_lock:
            for other in self.store.list():
                if other.name == new_name and other.uuid != rec.uuid:
                    raise AlreadyExists(
                        f"Failed to rename domain '{rec.name}' to '{new_name}': that name is "
                        f"taken by domid {other.domid}"
                    )
            rec.name = new_name
            rec.config.name = new_name
            self._save(rec)
        return rec

    # -- devices -------------------------------------------------------------------------
    async def _live(self, ref: str, doing: str, fn: Callable[[Any, DomainRecord],
                    Awaitable[T]]) -> T:
        """Run `fn(instance, record)` on a live domain under its lock, then save the record."""
        rec = self.resolve(ref)
        async with self._lock(rec.uuid):
            rec = self.store.get(rec.uuid) or rec
            if rec.state not in ("running", "paused"):
                raise InvalidConfig(f"Failed {doing} '{rec.name}': it is {rec.state}")
            result = await fn(self.instance(rec), rec)
            self._save(rec)
            return result

    async def block_attach(self, ref: str, spec: DiskSpec) -> None:
        await self._live(ref, "to attach a disk to", lambda i, r: i.attach_disk(r, spec))

    async def block_detach(self, ref: str, vdev: str) -> None:
        await self._live(ref, "to detach a disk from", lambda i, r: i.detach_disk(r, vdev))

    async def cd_insert(self, ref: str, vdev: str, target: str, fmt: str) -> None:
        await self._live(ref, "to insert a cdrom into",
                         lambda i, r: i.cd_insert(r, vdev, target, fmt))

    async def cd_eject(self, ref: str, vdev: str) -> None:
        await self._live(ref, "to eject a cdrom of", lambda i, r: i.cd_eject(r, vdev))

    async def network_attach(self, ref: str, vif: VifSpec) -> VifSpec:
        await self._live(ref, "to attach a vif to", lambda i, r: i.attach_vif(r, vif))
        return vif

    async def network_detach(self, ref: str, devid: str) -> None:
        await self._live(ref, "to detach a vif from", lambda i, r: i.detach_vif(r, devid))

    async def pci_attach(self, ref: str, bdf_text: str) -> None:
        rec = self.resolve(ref)
        bdf = self.pci.check_attachable(bdf_text, rec.name)
        for other in self.store.list():
            if bdf in other.config.pci:
                raise InUse(f"Failed to attach {bdf} to '{rec.name}': domain '{other.name}' "
                            "has it")
        await self._live(ref, "to attach a PCI device to", lambda i, r: i.pci_attach(r, bdf))

    async def pci_detach(self, ref: str, bdf_text: str) -> None:
        bdf = normalize_bdf(bdf_text)
        await self._live(ref, "to detach a PCI device from", lambda i, r: i.pci_detach(r, bdf))

    def pci_user(self, bdf: str) -> str | None:
        for rec in self.store.list():
            if bdf in rec.config.pci:
                return rec.name
        return None

    async def screenshot(self, ref: str) -> bytes:
        rec = self.resolve(ref)
        return await self.instance(rec).screenshot()

    async def pci_list(self, ref: str) -> list[dict[str, Any]]:
        rec = self.resolve(ref)
        return await self.instance(rec).pci_devices()

    async def mem_set(self, ref: str, mib: int) -> None:
        async def do(inst: Any, rec: DomainRecord) -> None:
            top = rec.config.effective_maxmem
            if mib > top:
                raise InvalidConfig(
                    f"Failed to set the memory of '{rec.name}' to {mib} MiB: that is above its "
                    f"maximum of {top} MiB (raise it with `xenia mem-max` first)"
                )
            if mib < 16:
                raise InvalidConfig(f"Failed to set the memory of '{rec.name}' to {mib} MiB: "
                                    "below 16 MiB no Linux guest survives")
            await inst.set_memory(rec, mib)
            rec.config.memory = mib

        await self._live(ref, "to set the memory of", do)

    async def mem_max(self, ref: str, mib: int) -> None:
        async def do(inst: Any, rec: DomainRecord) -> None:
            boot = int(rec.runtime.get("boot_maxmem", rec.config.effective_maxmem))
            if mib > boot:
                raise InvalidConfig(
                    f"Failed to set the maximum memory of '{rec.name}' to {mib} MiB: the domain "
                    f"was started with {boot} MiB of guest RAM and cannot grow past it; set "
                    "maxmem in the config and restart it"
                )
            if mib < rec.config.memory:
                await inst.set_memory(rec, mib)
                rec.config.memory = mib
            rec.config.maxmem = mib

        await self._live(ref, "to set the maximum memory of", do)

    async def vcpu_set(self, ref: str, count: int) -> None:
        async def do(inst: Any, rec: DomainRecord) -> None:
            top = rec.config.effective_maxvcpus
            if not 1 <= count <= top:
                raise InvalidConfig(
                    f"Failed to set the vCPUs of '{rec.name}' to {count}: it can have 1 to "
                    f"{top} (maxvcpus); set maxvcpus in the config and restart it for more"
                )
            await inst.set_vcpus(rec, count)
            rec.config.vcpus = count

        await self._live(ref, "to set the vCPUs of", do)

    async def vcpu_list(self, refs: list[str]) -> list[dict[str, Any]]:
        recs = [self.resolve(r) for r in refs] if refs else self.store.list()
        rows: list[dict[str, Any]] = []
        for rec in recs:
            inst = self._inst.get(rec.uuid)
            if inst is None or not inst.alive or rec.state not in ("running", "paused"):
                continue
            rows += await inst.vcpu_rows(rec)
        return rows

    async def vcpu_pin(self, ref: str, vcpu: str, hard: str) -> None:
        await self._live(ref, "to pin the vCPUs of", lambda i, r: i.pin_vcpus(r, vcpu, hard))

    def sched_credit(self, refs: list[str]) -> list[dict[str, Any]]:
        recs = [self.resolve(r) for r in refs] if refs else self.store.list()
        out = []
        for rec in recs:
            got = self.driver_for(rec.config).sched_get(rec)
            out.append({"name": rec.name, "domid": rec.domid, **got})
        return out

    async def sched_credit_set(self, ref: str, weight: int | None, cap: int | None) -> None:
        async def do(inst: Any, rec: DomainRecord) -> None:
            await asyncio.to_thread(self.driver_for(rec.config).sched_set, rec, weight, cap)

        await self._live(ref, "to set the scheduling of", do)

    async def stats(self) -> list[dict[str, Any]]:
        """Counters of every domain for `xenia top` (Domain-0 first)."""
        now = time.time()
        host_kib = hostinfo.total_mib() * 1024
        d0 = self.dom0()
        rows: list[dict[str, Any]] = [{
            "name": d0["name"], "domid": 0, "type": "host", "state_letters": "r-----",
            "cpu_time": d0["cpu_time"], "vcpus": d0["vcpus"], "memory_kib": host_kib,
            "maxmem_kib": host_kib, "host_memory_kib": host_kib, "nets": 0,
            "net_rx_bytes": 0, "net_tx_bytes": 0, "vbds": 0, "vbd_rd_ops": 0,
            "vbd_wr_ops": 0, "vbd_rd_bytes": 0, "vbd_wr_bytes": 0, "timestamp": now,
        }]
        for rec in self.store.list():
            inst = self._inst.get(rec.uuid)
            row: dict[str, Any] = {
                "name": rec.name, "domid": rec.domid, "type": rec.config.type,
                "state_letters": self.describe(rec)["state_letters"],
                "maxmem_kib": rec.config.effective_maxmem * 1024, "host_memory_kib": host_kib,
                "timestamp": now, "cpu_time": 0.0, "vcpus": rec.config.vcpus,
                "memory_kib": rec.config.memory * 1024, "nets": 0, "net_rx_bytes": 0,
                "net_tx_bytes": 0, "vbds": 0, "vbd_rd_ops": 0, "vbd_wr_ops": 0,
                "vbd_rd_bytes": 0, "vbd_wr_bytes": 0,
            }
            if inst is not None and inst.alive:
                try:
                    row.update(await inst.stats(rec))
                except XeniaError as e:
                    log.debug("stats of %s: %s", rec.name, e)
            rows.append(row)
        return rows

    # -- save / restore ------------------------------------------------------------------
    def portable(self, rec: DomainRecord) -> dict[str, Any]:
        """The record as another host (or a later restore) needs it: no host-local facts."""
        data = rec.to_dict()
        runtime = {k: v for k, v in rec.runtime.items()
                   if k in ("slots", "root_ports", "machine", "boot_maxmem", "pins")}
        data["runtime"] = runtime
        return data

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
        rec = self.resolve(ref)
        async with self._lock(rec.uuid):
            rec = self.store.get(rec.uuid) or rec
            if rec.state not in ("running", "paused"):
                raise InvalidConfig(f"Failed to save '{rec.name}': it is {rec.state}")
            inst = self.instance(rec)
            info = self.host_info()
            meta = {"record": self.portable(rec), "saved_at": time.time(),
                    "qemu_version": info.get("qemu_version"), "host": info.get("host"),
                    "was_paused": rec.state == "paused"}
            t0 = time.monotonic()
            size = await inst.save_state(target, meta)
            took = time.monotonic() - t0
            if keep:
                if rec.state == "running":
                    await inst.resume()
            elif leave_paused:
                rec.state = "paused"
                self._save(rec)
            else:
                await self._destroy_locked(rec)
        log.info("saved domain %s to %s (%d bytes, %.2f s)", rec.name, target, size, took)
        return {"file": str(target), "bytes": size, "seconds": took}

    async def restore(self, path: str, paused: bool = False,
                      overrides: dict[str, Any] | None = None,
                      admit: Callable[[DomainConfig], None] | None = None) -> DomainRecord:
        """xl restore: a new domain from a save file, continuing where it stopped.

        `admit(config)` may refuse the config the file carries (the API's checks for a
        token: its name and paths); it runs on a worker thread, after the overrides.
        """
        target = Path(path)
        header = await asyncio.to_thread(verify_savefile, target)
        try:
            rec = DomainRecord.from_dict(dict(header.meta["record"]))
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidConfig(f"Failed to restore from {target}: bad domain record ({e})") \
                from e
        if overrides and overrides.get("name"):
            check_name(overrides["name"])
            rec.name = rec.config.name = overrides["name"]
        if admit is not None:
            await asyncio.to_thread(admit, rec.config)
        check_config(rec.config)
        rec.state = "creating"
        rec.created_at = time.time()
        rec.domid = 0

        async def receive(inst: Instance) -> None:
            await inst.receive_file(target, header.offset)

        was_paused = bool(header.meta.get("was_paused"))
        return await self.build(rec, paused=paused or was_paused, incoming="defer",
                                receive=receive, doing="restore")

    # -- queries -------------------------------------------------------------------------
    def describe(self, rec: DomainRecord) -> dict[str, Any]:
        inst = self._inst.get(rec.uuid)
        running_now = inst.running_now() if inst is not None and inst.alive else False
        return {
            "name": rec.name,
            "domid": rec.domid,
            "uuid": rec.uuid,
            "type": rec.config.type,
            "memory": rec.config.memory,
            "maxmem": rec.config.effective_maxmem,
            "vcpus": rec.config.vcpus,
            "state": rec.state,
            "state_letters": state_letters(rec.state, running_now),
            "cpu_time": inst.cpu_seconds() if inst is not None else 0.0,
            "created_at": rec.created_at,
            "started_at": rec.started_at,
            "uptime": time.time() - rec.started_at if rec.started_at else 0.0,
            "console": str(inst.console_path()) if inst is not None else None,
            "console_log": str(inst.console_log()) if inst is not None else None,
            "runtime": rec.runtime,
            "config": rec.config.to_dict(),
        }

    def dom0(self) -> dict[str, Any]:
        return {
            "name": DOM0_NAME,
            "domid": 0,
            "uuid": "00000000-0000-0000-0000-000000000000",
            "type": "host",
            "memory": hostinfo.total_mib(),
            "maxmem": hostinfo.total_mib(),
            "vcpus": hostinfo.cpu_count(),
            "state": "running",
            "state_letters": "r-----",
            "cpu_time": hostinfo.host_cpu_seconds(),
            "started_at": hostinfo.boot_time(),
            "uptime": time.time() - hostinfo.boot_time(),
        }

    def list(self) -> list[dict[str, Any]]:
        return [self.dom0()] + [self.describe(r) for r in self.store.list()]

    def host_info(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(hostinfo.describe())
        drv = self.drivers.get("pv")
        if drv is not None:
            out.update(drv.host_info())
        out["domains"] = len(self.store.list())
        out["xenia_root"] = str(self.paths.state.parent)
        return out

    def console_log_path(self, ref: str) -> Path:
        rec = self.resolve(ref)
        return self.instance(rec).console_log()
