"""QemuHotplug: the device verbs of a QEMU domain — disks, cdroms, NICs, vCPUs, memory,
PCI, the screen.

Each verb takes the domain's current record, changes the running QEMU, and updates the
record's config/runtime for the caller (host/devices.py) to store. Each undoes its own
partial work on failure, so a failed attach leaves the guest and the host as they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from pathlib import Path
from typing import Any

from xenia.config.model import DiskSpec, VifSpec
from xenia.devices import cpu as cpudev
from xenia.devices import disk as diskdev
from xenia.devices import nic as nicdev
from xenia.devices.layout import Layout
from xenia.drivers import qemu_cpu
from xenia.drivers.base import DeviceControl
from xenia.drivers.qemu_confine import QemuConfinement
from xenia.drivers.qemu_devices import QemuDevices, hostdev_id
from xenia.drivers.qemu_usb import UsbHotplugMixin
from xenia.errors import (
    AlreadyExists,
    BackendError,
    InvalidConfig,
    NotFound,
    NotSupported,
    XeniaError,
)
from xenia.hostos.procfs import read_nofollow
from xenia.qemu.process import QemuProcess
from xenia.revert import Revert
from xenia.store.base import DomainRecord

log = logging.getLogger(__name__)

UNPLUG_TIMEOUT = 30.0


class QemuHotplug(UsbHotplugMixin, DeviceControl):
    def __init__(self, record: DomainRecord, proc: QemuProcess, host: QemuDevices) -> None:
        super().__init__(record)
        self.proc = proc
        self.qmp = proc.qmp
        self.host = host  # the host side: taps, disk checks
        # Devices asked to go (device_del) -> set when QEMU reports DEVICE_DELETED.
        self._deleted: dict[str, asyncio.Future[None]] = {}

    def device_deleted(self, qdev: str) -> None:
        fut = self._deleted.pop(qdev, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _device_del(self, qdev: str, what: str, timeout: float = UNPLUG_TIMEOUT) -> None:
        """device_del, then wait until QEMU reports the guest let go of it."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._deleted[qdev] = fut
        try:
            await self.qmp.device_del(qdev)
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise BackendError(
                f"Failed to detach {what}: the guest did not release it within {timeout:.0f} s "
                "(is the device in use, or does the guest lack PCIe hotplug support?)"
            ) from None
        finally:
            self._deleted.pop(qdev, None)

    async def _add_blockdevs(self, nodes: list[dict[str, Any]], revert: Revert) -> None:
        """blockdev-add each node (lowest first), each deleted again on a revert."""
        for node in nodes:
            await self.qmp.blockdev_add(node)
            revert.add(functools.partial(self.qmp.blockdev_del, node["node-name"]))

    async def _blockdev_del(self, nodes: list[str]) -> None:
        for node in reversed(nodes):
            with contextlib.suppress(XeniaError):
                await self.qmp.blockdev_del(node)

    # -- the files a confined QEMU is given (drivers/qemu_confine.py) -------------------
    async def _give(self, rec: DomainRecord, spec: DiskSpec, path: Path | None,
                    revert: Revert) -> None:
        """Before QEMU opens a new disk or medium itself: give it its files."""
        conf = self.host.confinement
        if conf is None or path is None:
            return
        given = await asyncio.to_thread(conf.give, rec, spec, path)
        revert.add(lambda: asyncio.to_thread(conf.give_back, rec, given))

    async def _give_back(self, rec: DomainRecord, spec: DiskSpec) -> None:
        conf = self.host.confinement
        if conf is not None:
            await asyncio.to_thread(conf.give_back_disk, rec, spec)

    # -- disks ---------------------------------------------------------------------------
    async def attach_disk(self, rec: DomainRecord, spec: DiskSpec) -> None:
        if any(d.vdev == spec.vdev for d in rec.config.disks):
            raise AlreadyExists(f"Failed to attach disk {spec.vdev} to '{rec.name}': it has a "
                                f"disk {spec.vdev} already (see `xenia block-list {rec.name}`)")
        if diskdev.is_remote(spec):
            raise NotSupported(f"Failed to attach disk {spec.vdev} to '{rec.name}': a disk a "
                               "driver domain serves is attached at create only (add it to "
                               "the config and restart the domain)")
        path = await asyncio.to_thread(self.host.check_disk, rec, spec)
        kind = diskdev.bus_kind(spec, rec.config.type)
        if kind == "ide":
            raise NotSupported(f"Failed to attach disk {spec.vdev} to '{rec.name}': IDE/AHCI "
                               "disks cannot be hot-plugged; use an xvdX or sdX name")
        layout = Layout.from_runtime(rec.runtime)
        async with Revert() as revert:
            if kind == "scsi" and diskdev.SCSI_CONTROLLER not in layout.slots:
                port = layout.take(diskdev.SCSI_CONTROLLER)
                await self.qmp.device_add(diskdev.scsi_controller(port))
                revert.add(lambda: self._device_del(diskdev.SCSI_CONTROLLER,
                                                    "the SCSI controller"))
            qdev = diskdev.qdev_id(spec)
            disk_port = layout.take(qdev) if kind == "virtio" else None
            plan = diskdev.plan(spec, path, rec.config.type, disk_port)
            await self._give(rec, spec, path, revert)
            await self._add_blockdevs(plan.blockdevs, revert)
            await self.qmp.device_add(plan.device)
            revert.success()
        rec.config.disks.append(spec)
        layout.save(rec.runtime)

    def _disk(self, rec: DomainRecord, ref: str) -> DiskSpec:
        from xenia.config.vdev import vdev_number

        for d in rec.config.disks:
            if d.vdev == ref or (ref.isdigit() and vdev_number(d.vdev) == int(ref)):
                return d
        raise NotFound(f"Failed to find disk '{ref}' of '{rec.name}': it has no such disk "
                       f"(see `xenia block-list {rec.name}`)")

    async def detach_disk(self, rec: DomainRecord, ref: str) -> None:
        spec = self._disk(rec, ref)
        qdev = diskdev.qdev_id(spec)
        if diskdev.bus_kind(spec, rec.config.type) == "ide":
            raise NotSupported(f"Failed to detach disk {spec.vdev} from '{rec.name}': IDE/AHCI "
                               "disks cannot be hot-unplugged")
        await self._device_del(qdev, f"disk {spec.vdev} from '{rec.name}'")
        if not diskdev.is_empty(spec):  # driver domain disks too: file- is their nbd node
            await self._blockdev_del([f"file-{spec.vdev}", f"drive-{spec.vdev}"])
            await self._give_back(rec, spec)
        rec.config.disks.remove(spec)
        layout = Layout.from_runtime(rec.runtime)
        layout.release(qdev)
        layout.save(rec.runtime)

    async def cd_insert(self, rec: DomainRecord, ref: str, target: str, fmt: str) -> None:
        spec = self._disk(rec, ref)
        if not spec.is_cdrom:
            raise InvalidConfig(f"Failed to insert into {spec.vdev} of '{rec.name}': it is not "
                                "a cdrom (devtype=cdrom)")
        if not diskdev.is_empty(spec):
            await self.cd_eject(rec, ref)
        new = DiskSpec(vdev=spec.vdev, target=target, format=fmt, access="ro",
                       devtype="cdrom", spec=spec.spec)
        path = await asyncio.to_thread(self.host.check_disk, rec, new)
        plan = diskdev.plan(new, path, rec.config.type, None)
        if plan.node is None:
            raise InvalidConfig(f"Failed to insert into {spec.vdev} of '{rec.name}': give an "
                                "image to insert (format 'empty' inserts nothing; use "
                                "cd-eject)")
        qdev = diskdev.qdev_id(spec)
        async with Revert() as revert:
            await self._give(rec, new, path, revert)
            await self._add_blockdevs(plan.blockdevs, revert)
            await self.qmp.blockdev_open_tray(qdev, force=True)
            await self.qmp.blockdev_insert_medium(qdev, plan.node)
            await self.qmp.blockdev_close_tray(qdev)
            revert.success()
        spec.target, spec.format = str(path), fmt

    async def cd_eject(self, rec: DomainRecord, ref: str) -> None:
        spec = self._disk(rec, ref)
        if not spec.is_cdrom:
            raise InvalidConfig(f"Failed to eject {spec.vdev} of '{rec.name}': it is not a cdrom")
        qdev = diskdev.qdev_id(spec)
        await self.qmp.blockdev_open_tray(qdev, force=True)
        await self.qmp.blockdev_remove_medium(qdev)
        await self._blockdev_del([f"file-{spec.vdev}", f"drive-{spec.vdev}"])
        await self.qmp.blockdev_close_tray(qdev)
        await self._give_back(rec, spec)
        spec.target, spec.format = None, "empty"

    # -- NICs ----------------------------------------------------------------------------
    async def attach_vif(self, rec: DomainRecord, vif: VifSpec) -> None:
        if vif.devid is not None and any(v.devid == vif.devid for v in rec.config.vifs):
            raise AlreadyExists(f"Failed to attach vif to '{rec.name}': devid {vif.devid} is "
                                "taken")
        self.host.fill_in_vif(rec, vif)
        await asyncio.to_thread(self.host.check_vif, rec, vif)
        assert vif.devid is not None
        tap = self.host.tap_for(rec, vif)
        layout = Layout.from_runtime(rec.runtime)
        qdev = nicdev.qdev_id(vif.devid)
        port = layout.take(qdev)
        plan = nicdev.plan(vif, vif.devid, tap, rec.config.type, port)
        async with Revert() as revert:
            # backend=DOM: a tap on that driver domain's switch (qemu_drvdom.py).
            await asyncio.to_thread(self.host.network.plug, tap,
                                    self.host.links.host_vif(rec, vif),
                                    QemuConfinement.tap_owner(rec))
            revert.add(lambda: asyncio.to_thread(self.host.network.unplug, tap))
            await self.qmp.netdev_add(plan.netdev)
            revert.add(lambda: self.qmp.netdev_del(plan.netdev["id"]))
            await self.qmp.device_add(plan.device)
            revert.success()
        rec.config.vifs.append(vif)
        rec.runtime.setdefault("taps", {})[str(vif.devid)] = tap
        layout.save(rec.runtime)

    def _vif(self, rec: DomainRecord, ref: str) -> VifSpec:
        for v in rec.config.vifs:
            if str(v.devid) == ref or (v.mac and v.mac.lower() == ref.lower()):
                return v
        raise NotFound(f"Failed to find vif '{ref}' of '{rec.name}': it has no such vif "
                       f"(give its devid or MAC, see `xenia network-list {rec.name}`)")

    async def detach_vif(self, rec: DomainRecord, ref: str) -> None:
        vif = self._vif(rec, ref)
        assert vif.devid is not None
        qdev = nicdev.qdev_id(vif.devid)
        await self._device_del(qdev, f"vif {vif.devid} from '{rec.name}'")
        with contextlib.suppress(XeniaError):
            await self.qmp.netdev_del(f"net{vif.devid}")
        tap = rec.runtime.get("taps", {}).pop(str(vif.devid), None)
        if tap:
            await asyncio.to_thread(self.host.network.unplug, tap)
        rec.config.vifs.remove(vif)
        layout = Layout.from_runtime(rec.runtime)
        layout.release(qdev)
        layout.save(rec.runtime)

    # -- memory --------------------------------------------------------------------------
    async def set_memory(self, rec: DomainRecord, mib: int) -> None:
        """The balloon target: the guest gives back (or takes) memory down (up) to it."""
        await self.qmp.balloon(mib * 1024 * 1024)

    async def balloon_actual_mib(self) -> int:
        return await self.qmp.query_balloon() // (1024 * 1024)

    # -- vCPUs ---------------------------------------------------------------------------
    async def vcpu_threads(self) -> dict[int, int]:
        """vCPU index -> host thread id."""
        cpus = await self.qmp.query_cpus_fast()
        return {int(c["cpu-index"]): int(c["thread-id"]) for c in cpus}

    async def set_vcpus(self, rec: DomainRecord, count: int) -> list[int]:
        """Hot-add or remove vCPUs (the highest first) until `count` are present.

        Returns the indexes added. vCPU 0 is never removed.
        """
        accel = rec.runtime.get("accel", "tcg")
        present = sorted(await self.vcpu_threads())
        to_add = max(0, count - len(present))
        # QEMU's multi-threaded TCG gives each vCPU thread it ever starts a translation
        # context, never returned on unplug, and aborts past maxcpus of them
        # ("tcg_register_thread: assertion failed: (n < tcg_max_ctxs)"; single-threaded
        # TCG fails too). So under TCG a removed vCPU cannot come back in this QEMU.
        created = int(rec.runtime.get("vcpu_threads_created", len(present)))
        maxv = rec.config.effective_maxvcpus
        if accel == "tcg" and to_add and created + to_add > maxv:
            raise NotSupported(
                f"Failed to add {to_add} vCPU(s) to '{rec.name}': under TCG, QEMU can start "
                f"only {maxv} vCPU threads in a domain's life and {created} were started "
                "already (removed vCPUs cannot be re-added: a QEMU limitation); shut the "
                "domain down and create it again (or run it with KVM) to have them back"
            )
        added: list[int] = []
        # Ascending order: adding a higher core first made the guest's onlining slow
        # (12.7 s measured, ../shared/notes/qemu-facts.md).
        for i in range(len(present), count):
            await self.qmp.device_add(cpudev.device(i, accel))
            added.append(i)
            rec.runtime["vcpu_threads_created"] = created + len(added)
        if added:
            threads = await self.vcpu_threads()
            qemu_cpu.pin_threads(rec, {i: threads[i] for i in added if i in threads})
        for i in sorted((i for i in present if i >= count), reverse=True):
            if i == 0:
                continue
            await self._device_del(cpudev.qdev_id(i), f"vCPU {i} of '{rec.name}'")
        return added

    async def vcpu_rows(self, rec: DomainRecord) -> list[dict[str, Any]]:
        assert self.proc.pid is not None
        return qemu_cpu.vcpu_rows(rec, self.proc.pid, await self.vcpu_threads())

    async def pin_vcpus(self, rec: DomainRecord, vcpu: str, hard: str) -> None:
        if vcpu != "all" and not vcpu.isdigit():
            raise InvalidConfig(f"Failed to pin vCPU '{vcpu}' of '{rec.name}': give a vCPU "
                                "number or 'all'")
        threads = await self.vcpu_threads()
        # In a worker thread: resolving a CPU list (up to MAX_CPULIST characters) and
        # setting each thread's affinity is CPU and syscall work off the event loop.
        await asyncio.to_thread(qemu_cpu.pin, rec, threads, vcpu, hard)

    # -- PCI -----------------------------------------------------------------------------
    async def pci_attach(self, rec: DomainRecord, bdf: str) -> None:
        if bdf in rec.config.pci:
            raise AlreadyExists(f"Failed to attach {bdf} to '{rec.name}': attached already")
        qdev = hostdev_id(bdf)
        layout = Layout.from_runtime(rec.runtime)
        port = layout.take(qdev)
        await self.qmp.device_add({"driver": "vfio-pci", "host": bdf, "id": qdev,
                                   "bus": port})
        rec.config.pci.append(bdf)
        layout.save(rec.runtime)

    async def pci_detach(self, rec: DomainRecord, bdf: str) -> None:
        if bdf not in rec.config.pci:
            raise NotFound(f"Failed to detach {bdf} from '{rec.name}': it is not attached")
        qdev = hostdev_id(bdf)
        await self._device_del(qdev, f"{bdf} from '{rec.name}'")
        rec.config.pci.remove(bdf)
        layout = Layout.from_runtime(rec.runtime)
        layout.release(qdev)
        layout.save(rec.runtime)

    async def pci_devices(self) -> list[dict[str, Any]]:
        """Every guest-visible PCI function: bus:slot.fn, ids, class, QEMU id."""
        out: list[dict[str, Any]] = []

        def walk(bus: dict[str, Any]) -> None:
            for dev in bus.get("devices", []):
                out.append({
                    "bdf": f"0000:{dev['bus']:02x}:{dev['slot']:02x}.{dev['function']}",
                    "vendor": f"{dev['id']['vendor']:04x}",
                    "device": f"{dev['id']['device']:04x}",
                    "class": dev.get("class_info", {}).get("desc", ""),
                    "qdev": dev.get("qdev_id", ""),
                })
                if "pci_bridge" in dev:
                    walk(dev["pci_bridge"])  # {"bus": {...}, "devices": [...]}

        for bus in await self.qmp.query_pci():
            walk(bus)
        return out

    # -- the screen ----------------------------------------------------------------------
    async def screenshot(self) -> bytes:
        """The guest's screen as PNG (QMP screendump into the run dir, read, removed)."""
        cfg = self.record.config
        if cfg.type != "hvm" or cfg.nographic:
            raise NotSupported(f"Failed to take a screenshot of '{self.record.name}': it has "
                               "no graphics (an hvm domain without nographic has)")
        path = self.proc.files.dir / "screen.png"
        try:
            await self.qmp.screendump(path, "png")
            # QEMU owns the run dir: never read through a link it may have put there.
            return await asyncio.to_thread(read_nofollow, path, 64 << 20)
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
