"""UsbHotplugMixin: xl's usbctrl-attach/-detach, usbdev-attach/-detach and usb-list for
a QEMU domain (part of QemuHotplug, whose device_del waiting it uses).

A controller is hot-plugged onto a free PCIe root port (devices/layout.py), a device onto
a free port of a controller; a USB stick (type=storage) after its image's blockdevs,
which go again, with the confined QEMU's access to the image, when it is unplugged. Each
verb updates the record's config (usbctrl, usbdev) and slot map for the caller to store,
so a restart or a migration rebuilds the same machine.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from xenia.config.xldevices import MAX_USBCTRL, place_usb
from xenia.devices.layout import Layout
from xenia.errors import InUse, NotFound, XeniaError
from xenia.qemu import xldevices
from xenia.qemu.commands import Qmp
from xenia.revert import Revert
from xenia.store.base import DomainRecord

if TYPE_CHECKING:
    from xenia.drivers.qemu_devices import QemuDevices


class UsbHotplugMixin:
    qmp: Qmp
    host: QemuDevices

    async def _device_del(self, qdev: str, what: str, timeout: float = 30.0) -> None:
        raise NotImplementedError  # QemuHotplug's

    async def _add_blockdevs(self, nodes: list[dict[str, Any]], revert: Revert) -> None:
        raise NotImplementedError  # QemuHotplug's

    async def _blockdev_del(self, nodes: list[str]) -> None:
        raise NotImplementedError  # QemuHotplug's

    async def usbctrl_attach(self, rec: DomainRecord, ctrl: dict[str, Any]) -> int:
        """Adds a controller; returns its devid."""
        fail = f"Failed to attach a USB controller to '{rec.name}'"
        if len(rec.config.usbctrl) >= MAX_USBCTRL:
            raise InUse(f"{fail}: it has {MAX_USBCTRL} already (the most a domain has)")
        ctrls = [dict(c) for c in rec.config.usbctrl] + [dict(ctrl)]
        try:
            place_usb(ctrls, [dict(d) for d in rec.config.usbdev], rec.name)
        except XeniaError as e:
            raise type(e)(f"{fail}: {e.message}") from None
        new = ctrls[-1]
        qdev = xldevices.usbctrl_id(new["devid"])
        layout = Layout.from_runtime(rec.runtime)
        port = layout.take(qdev)
        await self.qmp.device_add(xldevices.usbctrl_device(new, port))
        rec.config.usbctrl.append(new)
        layout.save(rec.runtime)
        return int(new["devid"])

    async def usbctrl_detach(self, rec: DomainRecord, devid: int) -> None:
        """Removes a controller and, first, the devices on it (as xl does)."""
        ctrl = next((c for c in rec.config.usbctrl if c["devid"] == devid), None)
        if ctrl is None:
            raise NotFound(f"Failed to detach USB controller {devid} from '{rec.name}': it "
                           "has none with that devid (see `xenia usb-list`)")
        for dev in [d for d in rec.config.usbdev if d["controller"] == devid]:
            await self.usbdev_detach(rec, devid, int(dev["port"]))
        qdev = xldevices.usbctrl_id(devid)
        await self._device_del(qdev, f"USB controller {devid} from '{rec.name}'")
        rec.config.usbctrl.remove(ctrl)
        layout = Layout.from_runtime(rec.runtime)
        layout.release(qdev)
        layout.save(rec.runtime)

    async def usbdev_attach(self, rec: DomainRecord, dev: dict[str, Any]) -> dict[str, Any]:
        """Plugs a device into a free port (or the controller= and port= it names);
        returns it with its controller and port."""
        fail = f"Failed to attach a USB device to '{rec.name}'"
        devs = [dict(d) for d in rec.config.usbdev] + [dict(dev)]
        try:
            place_usb([dict(c) for c in rec.config.usbctrl], devs, rec.name)
        except XeniaError as e:
            raise type(e)(f"{fail}: {e.message}") from None
        new = devs[-1]
        await asyncio.to_thread(xldevices.check_usb_host, [new], rec.name)
        await asyncio.to_thread(xldevices.check_usb_images, [new], rec.name)
        async with Revert() as revert:
            if new["type"] == "storage":
                # Ordering: QEMU opens the image at blockdev-add, as its own uid, so it
                # is given the file first; the device needs the node.
                await self._give_stick(rec, new, revert)
                await self._add_blockdevs(xldevices.usb_storage_blockdevs(new), revert)
            await self.qmp.device_add(xldevices.usbdev_device(new))
            revert.success()
        rec.config.usbdev.append(new)
        return new

    async def _give_stick(self, rec: DomainRecord, dev: dict[str, Any],
                          revert: Revert) -> None:
        conf = self.host.confinement
        if conf is None:
            return
        write, read = xldevices.usb_storage_files([dev])
        given = await asyncio.to_thread(conf.give_files, rec, write, read)
        revert.add(lambda: asyncio.to_thread(conf.give_back, rec, given))

    async def usbdev_detach(self, rec: DomainRecord, controller: int, port: int) -> None:
        dev = next((d for d in rec.config.usbdev
                    if d["controller"] == controller and d["port"] == port), None)
        if dev is None:
            raise NotFound(f"Failed to detach USB device {controller}.{port} from "
                           f"'{rec.name}': nothing is on that port (see `xenia usb-list`)")
        await self._device_del(xldevices.usbdev_id(dev),
                               f"USB device {controller}.{port} from '{rec.name}'")
        if dev["type"] == "storage":
            node = xldevices.usb_storage_node(dev)
            await self._blockdev_del([f"{node}-file", node])  # the format node first
            conf = self.host.confinement
            others = {str(d.get("path")) for d in rec.config.usbdev
                      if d is not dev and d["type"] == "storage"}
            if conf is not None and str(dev["path"]) not in others:
                await asyncio.to_thread(conf.give_back, rec, [os.path.realpath(dev["path"])])
        rec.config.usbdev.remove(dev)

    async def usb_rows(self, rec: DomainRecord) -> list[dict[str, Any]]:
        """Each controller with its devices as the config has them, and what QEMU's
        USB bus reports of each (`info usb`: speed and product)."""
        seen = await self.qmp.human_monitor_command("info usb")
        found: dict[str, str] = {}
        for line in seen.splitlines():
            _, _, qdev = line.rpartition("ID: ")
            if qdev:
                found[qdev.strip()] = line.split(", ID:")[0].strip()
        rows = []
        for c in rec.config.usbctrl:
            devs = [{**d, "id": xldevices.usbdev_id(d),
                     "seen": found.get(xldevices.usbdev_id(d), "")}
                    for d in rec.config.usbdev if d["controller"] == c["devid"]]
            rows.append({**c, "devices": devs})
        return rows
