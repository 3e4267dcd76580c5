"""DeviceVerbs: xl's device and resource verbs — block-, cd-, network-, pci-, mem-, vcpu-,
sched-credit, screenshot — on the domains of the DomainManager.

Each checks the domain's state, runs the instance's verb (Instance.devices, the driver's
DeviceControl) under the domain's lock and stores the record it changed. The checks
that need the whole host (a PCI device one domain has, memory bounds) are made here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from xenia.config.model import DiskSpec, VifSpec
from xenia.drivers.base import DeviceControl
from xenia.errors import InUse, InvalidConfig
from xenia.hostos.pci import PciAssign, normalize_bdf
from xenia.store.base import DomainRecord
from xenia.store.state import LIVE, require

if TYPE_CHECKING:
    from xenia.host.manager import DomainManager

T = TypeVar("T")
# Below this no Linux guest survives.
MIN_MEMORY_MIB = 16


class DeviceVerbs:
    def __init__(self, manager: DomainManager, pci: PciAssign) -> None:
        self.m = manager
        self.pci = pci

    async def _live(self, ref: str, doing: str,
                    fn: Callable[[DeviceControl, DomainRecord], Awaitable[T]]) -> T:
        """Run `fn(devices, record)` on a live domain under its lock, then store the
        record it changed."""
        rec = self.m.resolve(ref)
        async with self.m.locked(rec.uuid):
            rec = self.m.store.get(rec.uuid) or rec
            require(rec, doing, LIVE)
            result = await fn(self.m.instance(rec).devices, rec)
            self.m.store.put(rec)
            return result

    # -- disks and cdroms ----------------------------------------------------------------
    async def block_attach(self, ref: str, spec: DiskSpec) -> None:
        await self._live(ref, "to attach a disk to", lambda d, r: d.attach_disk(r, spec))

    async def block_detach(self, ref: str, vdev: str) -> None:
        await self._live(ref, "to detach a disk from", lambda d, r: d.detach_disk(r, vdev))

    async def cd_insert(self, ref: str, vdev: str, target: str, fmt: str) -> None:
        await self._live(ref, "to insert a cdrom into",
                         lambda d, r: d.cd_insert(r, vdev, target, fmt))

    async def cd_eject(self, ref: str, vdev: str) -> None:
        await self._live(ref, "to eject a cdrom of", lambda d, r: d.cd_eject(r, vdev))

    # -- NICs ----------------------------------------------------------------------------
    async def network_attach(self, ref: str, vif: VifSpec) -> VifSpec:
        await self._live(ref, "to attach a vif to", lambda d, r: d.attach_vif(r, vif))
        return vif

    async def network_detach(self, ref: str, devid: str) -> None:
        await self._live(ref, "to detach a vif from", lambda d, r: d.detach_vif(r, devid))

    # -- PCI -----------------------------------------------------------------------------
    async def pci_attach(self, ref: str, bdf_text: str) -> None:
        rec = self.m.resolve(ref)
        bdf = self.pci.check_attachable(bdf_text, rec.name)
        for other in self.m.store.list():
            if bdf in other.config.pci:
                raise InUse(f"Failed to attach {bdf} to '{rec.name}': domain '{other.name}' "
                            "has it")
        await self._live(ref, "to attach a PCI device to", lambda d, r: d.pci_attach(r, bdf))

    async def pci_detach(self, ref: str, bdf_text: str) -> None:
        bdf = normalize_bdf(bdf_text)
        await self._live(ref, "to detach a PCI device from", lambda d, r: d.pci_detach(r, bdf))

    async def pci_list(self, ref: str) -> list[dict[str, Any]]:
        rec = self.m.resolve(ref)
        return await self.m.instance(rec).devices.pci_devices()

    # -- USB (drivers/qemu_usb.py) ---------------------------------------------------------
    async def usbctrl_attach(self, ref: str, ctrl: dict[str, Any]) -> int:
        return await self._live(ref, "to attach a USB controller to",
                                lambda d, r: d.usbctrl_attach(r, ctrl))

    async def usbctrl_detach(self, ref: str, devid: int) -> None:
        await self._live(ref, "to detach a USB controller from",
                         lambda d, r: d.usbctrl_detach(r, devid))

    async def usbdev_attach(self, ref: str, dev: dict[str, Any]) -> dict[str, Any]:
        return await self._live(ref, "to attach a USB device to",
                                lambda d, r: d.usbdev_attach(r, dev))

    async def usbdev_detach(self, ref: str, controller: int, port: int) -> None:
        await self._live(ref, "to detach a USB device from",
                         lambda d, r: d.usbdev_detach(r, controller, port))

    async def usb_list(self, ref: str) -> list[dict[str, Any]]:
        return await self._live(ref, "to list the USB devices of",
                                lambda d, r: d.usb_rows(r))

    def assignable_list(self) -> list[dict[str, Any]]:
        return self.pci.list()

    def assignable_add(self, bdf: str) -> dict[str, Any]:
        return self.pci.add(bdf)

    def assignable_remove(self, bdf: str, rebind: bool) -> None:
        self.pci.remove(bdf, rebind, self._pci_user(normalize_bdf(bdf)))

    def _pci_user(self, bdf: str) -> str | None:
        for rec in self.m.store.list():
            if bdf in rec.config.pci:
                return rec.name
        return None

    # -- the screen ----------------------------------------------------------------------
    async def screenshot(self, ref: str) -> bytes:
        rec = self.m.resolve(ref)
        return await self.m.instance(rec).devices.screenshot()

    # -- memory --------------------------------------------------------------------------
    async def mem_set(self, ref: str, mib: int) -> None:
        async def do(dev: DeviceControl, rec: DomainRecord) -> None:
            top = rec.config.effective_maxmem
            if mib > top:
                raise InvalidConfig(
                    f"Failed to set the memory of '{rec.name}' to {mib} MiB: that is above its "
                    f"maximum of {top} MiB (raise it with `xenia mem-max` first)"
                )
            if mib < MIN_MEMORY_MIB:
                raise InvalidConfig(f"Failed to set the memory of '{rec.name}' to {mib} MiB: "
                                    f"below {MIN_MEMORY_MIB} MiB no Linux guest survives")
            await dev.set_memory(rec, mib)
            rec.config.memory = mib

        await self._live(ref, "to set the memory of", do)

    async def mem_max(self, ref: str, mib: int) -> None:
        async def do(dev: DeviceControl, rec: DomainRecord) -> None:
            boot = int(rec.runtime.get("boot_maxmem", rec.config.effective_maxmem))
            if mib > boot:
                raise InvalidConfig(
                    f"Failed to set the maximum memory of '{rec.name}' to {mib} MiB: the domain "
                    f"was started with {boot} MiB of guest RAM and cannot grow past it; set "
                    "maxmem in the config and restart it"
                )
            if mib < rec.config.memory:
                await dev.set_memory(rec, mib)
                rec.config.memory = mib
            rec.config.maxmem = mib

        await self._live(ref, "to set the maximum memory of", do)

    # -- vCPUs and scheduling ------------------------------------------------------------
    async def vcpu_set(self, ref: str, count: int) -> None:
        async def do(dev: DeviceControl, rec: DomainRecord) -> None:
            top = rec.config.effective_maxvcpus
            if not 1 <= count <= top:
                raise InvalidConfig(
                    f"Failed to set the vCPUs of '{rec.name}' to {count}: it can have 1 to "
                    f"{top} (maxvcpus); set maxvcpus in the config and restart it for more"
                )
            await dev.set_vcpus(rec, count)
            rec.config.vcpus = count

        await self._live(ref, "to set the vCPUs of", do)

    async def vcpu_list(self, refs: list[str]) -> list[dict[str, Any]]:
        recs = [self.m.resolve(r) for r in refs] if refs else self.m.store.list()
        rows: list[dict[str, Any]] = []
        for rec in recs:
            inst = self.m.instance_of(rec.uuid)
            if inst is None or not inst.alive or rec.state not in LIVE:
                continue
            rows += await inst.devices.vcpu_rows(rec)
        return rows

    async def vcpu_pin(self, ref: str, vcpu: str, hard: str) -> None:
        await self._live(ref, "to pin the vCPUs of", lambda d, r: d.pin_vcpus(r, vcpu, hard))

    def sched_credit(self, refs: list[str]) -> list[dict[str, Any]]:
        recs = [self.m.resolve(r) for r in refs] if refs else self.m.store.list()
        out = []
        for rec in recs:
            got = self.m.driver_for(rec.config).sched_get(rec)
            out.append({"name": rec.name, "domid": rec.domid, **got})
        return out

    async def sched_credit_set(self, ref: str, weight: int | None, cap: int | None) -> None:
        async def do(dev: DeviceControl, rec: DomainRecord) -> None:
            await asyncio.to_thread(self.m.driver_for(rec.config).sched_set, rec, weight, cap)

        await self._live(ref, "to set the scheduling of", do)
