"""QemuDevices: the disks and NICs of QEMU domains — checks, host side, QEMU JSON.

The runtime part of a domain's devices lives in its record: runtime["slots"] and
["root_ports"] (devices/layout.py) and runtime["taps"] (devid -> tap name). The config part
(config.disks, config.vifs, with generated MACs filled in) is what a restart or a
migration rebuilds the machine from, hot-plugged devices included.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from xenia.config.model import DiskSpec, VifSpec
from xenia.devices import disk as diskdev
from xenia.devices import display, spice
from xenia.devices import nic as nicdev
from xenia.devices.layout import SPARE_ROOT_PORTS, Layout
from xenia.drivers.qemu_confine import QemuConfinement
from xenia.drivers.qemu_drvdom import LINK_VIF, SWITCH_VIF, DriverLinks
from xenia.errors import AlreadyExists, InvalidConfig, XeniaError
from xenia.hostos.pci import PciAssign
from xenia.network.manager import NetworkManager
from xenia.qemu import vscsi, xldevices
from xenia.revert import Revert
from xenia.storage.manager import StorageManager
from xenia.store.base import DomainRecord, Store


class QemuDevices:
    def __init__(self, store: Store, storage: StorageManager, network: NetworkManager) -> None:
        self.store = store
        self.storage = storage
        self.network = network
        self.confinement: QemuConfinement | None = None  # set by QemuDriver
        self.links = DriverLinks(store, network)

    # -- disks ---------------------------------------------------------------------------
    def disk_users(self, path: Path, me: str) -> list[tuple[str, bool]]:
        """Other domains whose disks are `path`: [(name, read-only)]."""
        real = os.path.realpath(path)
        users = []
        for rec in self.store.list():
            if rec.uuid == me:
                continue
            for d in rec.config.disks:
                if diskdev.has_host_file(d) and os.path.realpath(diskdev.target_path(d)) == real:
                    users.append((rec.name, d.readonly or d.is_cdrom))
        return users

    def path_in_use(self, path: str) -> str | None:
        """For the storage layer: which domain uses this image, if any."""
        users = self.disk_users(Path(path), me="")
        return users[0][0] if users else None

    def check_disk(self, rec: DomainRecord, spec: DiskSpec) -> Path | None:
        diskdev.bus_kind(spec, rec.config.type)  # a vdev QEMU can place
        if diskdev.is_remote(spec):
            return None  # inside its driver domain: DriverLinks.check
        path = diskdev.resolve_target(spec, rec.name)
        if path is None:
            return None
        diskdev.check_format(spec, path, rec.name, self.storage.image_info)
        diskdev.check_sharing(spec, path, rec.name,
                              lambda p: self.disk_users(p, rec.uuid),
                              self.storage.dependents_of)
        return path

    def check_disks(self, rec: DomainRecord) -> None:
        seen: set[str] = set()
        for spec in rec.config.disks:
            if spec.vdev in seen:
                raise InvalidConfig(f"Failed to create domain '{rec.name}': two disks are "
                                    f"named {spec.vdev}")
            seen.add(spec.vdev)
            self.check_disk(rec, spec)

    # -- NICs ----------------------------------------------------------------------------
    def check_vif(self, rec: DomainRecord, vif: VifSpec) -> None:
        nicdev.model_of(vif, rec.config.type)
        if vif.spec not in (LINK_VIF, SWITCH_VIF):  # a driver domain's own: made at start
            self.network.check_vif(self.links.host_vif(rec, vif))
        if vif.mac is not None:
            for other in self.store.list():
                if other.uuid == rec.uuid:
                    continue
                for v in other.config.vifs:
                    if v.mac and v.mac.lower() == vif.mac.lower():
                        raise AlreadyExists(
                            f"Failed to add vif with MAC {vif.mac} to '{rec.name}': domain "
                            f"'{other.name}' has that MAC already; pick another or leave "
                            "mac= out for a generated one"
                        )
            self.network.check_mac(vif.mac)

    def check_vifs(self, rec: DomainRecord) -> None:
        macs: set[str] = set()
        for vif in rec.config.vifs:
            self.check_vif(rec, vif)
            if vif.mac:
                if vif.mac.lower() in macs:
                    raise AlreadyExists(f"Failed to create domain '{rec.name}': two of its "
                                        f"vifs have MAC {vif.mac}")
                macs.add(vif.mac.lower())

    def next_devid(self, rec: DomainRecord) -> int:
        used = {v.devid for v in rec.config.vifs if v.devid is not None}
        devid = 0
        while devid in used:
            devid += 1
        return devid

    def fill_in_vif(self, rec: DomainRecord, vif: VifSpec) -> None:
        """Give a vif its devid and MAC (generated once, then kept across reboots)."""
        if vif.devid is None:
            vif.devid = self.next_devid(rec)
        if vif.mac is None:
            taken = {v.mac for v in rec.config.vifs if v.mac}
            while True:
                mac = self.network.generate_mac()
                if mac not in taken and self.network.mac_in_use(mac) is None:
                    break
            vif.mac = mac

    def tap_for(self, rec: DomainRecord, vif: VifSpec) -> str:
        assert vif.devid is not None
        return self.network.tap_name(rec.domid, vif.devid, vif.vifname)

    # -- whole domains -------------------------------------------------------------------
    def check(self, rec: DomainRecord) -> None:
        self.links.check(rec)
        self.check_disks(rec)
        self.check_vifs(rec)
        pci = PciAssign(self.store)
        for i, spec in enumerate(rec.config.pci):
            # pci = ["BDF[,options]"]: the BDF is what QEMU needs; options are xl's.
            rec.config.pci[i] = pci.check_attachable(spec.split(",")[0].split("@")[0],
                                                     rec.name)

    def prepare(self, rec: DomainRecord) -> None:
        """Fill in generated values and place devices on root ports (once, at create)."""
        self.links.prepare(rec)  # a driver domain's link NICs, placed like its own
        for vif in rec.config.vifs:
            self.fill_in_vif(rec, vif)
        if "slots" in rec.runtime:
            return
        layout = Layout(0)
        for spec in rec.config.disks:
            if diskdev.bus_kind(spec, rec.config.type) == "virtio":
                layout.slots[diskdev.qdev_id(spec)] = ""
        if any(diskdev.bus_kind(s, rec.config.type) == "scsi" for s in rec.config.disks):
            layout.slots[diskdev.SCSI_CONTROLLER] = ""
        for vif in rec.config.vifs:
            assert vif.devid is not None
            layout.slots[nicdev.qdev_id(vif.devid)] = ""
        for bdf in rec.config.pci:
            layout.slots[hostdev_id(bdf)] = ""
        for ctrl in rec.config.usbctrl:
            layout.slots[xldevices.usbctrl_id(ctrl["devid"])] = ""
        for i in range(len(rec.config.p9)):
            layout.slots[xldevices.p9_id(i)] = ""
        for h in vscsi.hosts(rec.config):
            layout.slots[vscsi.controller_id(h)] = ""
        if rec.config.spice.get("usbredirection"):
            layout.slots[spice.USBREDIR_CTRL] = ""
        wanted = list(layout.slots)
        layout = Layout(len(wanted) + SPARE_ROOT_PORTS)
        for qdev in wanted:
            layout.take(qdev)
        layout.save(rec.runtime)

    def plug_host(self, rec: DomainRecord) -> None:
        """Create the taps of every vif; on failure none is left."""
        taps: dict[str, str] = {}
        self.links.bring_up(rec)
        rec.runtime["nbd"] = self.links.remote_disks(rec)
        with Revert() as revert:
            for vif in rec.config.vifs:
                tap = self.tap_for(rec, vif)
                self.network.plug(tap, self.links.host_vif(rec, vif),
                                  QemuConfinement.tap_owner(rec))
                revert.add(functools.partial(self.network.unplug, tap))
                taps[str(vif.devid)] = tap
            revert.success()
        rec.runtime["taps"] = taps

    def unplug_host(self, rec: DomainRecord) -> None:
        for tap in rec.runtime.get("taps", {}).values():
            try:
                self.network.unplug(tap)
            except XeniaError:
                pass


def argv_devices(rec: DomainRecord) -> tuple[Layout, list[tuple[str, dict[str, Any]]]]:
    """The -blockdev/-netdev/-device JSON of a domain's disks and NICs, as placed."""
    dtype = rec.config.type
    layout = Layout.from_runtime(rec.runtime)
    boot = display.boot_order(rec.config)
    out: list[tuple[str, dict[str, Any]]] = []
    if diskdev.SCSI_CONTROLLER in layout.slots:
        out.append(("-device", diskdev.scsi_controller(layout.slots[diskdev.SCSI_CONTROLLER])))
    for spec in rec.config.disks:
        path = diskdev.target_path(spec) if diskdev.has_host_file(spec) else None
        nbd = rec.runtime.get("nbd", {}).get(spec.vdev) if diskdev.is_remote(spec) else None
        remote = None if nbd is None else diskdev.nbd_blockdevs(
            spec, str(nbd["host"]), int(nbd["port"]), str(nbd["export"]))
        plan = diskdev.plan(spec, path, dtype, layout.slots.get(diskdev.qdev_id(spec)),
                            boot.get(diskdev.qdev_id(spec)), remote)
        out += [("-blockdev", b) for b in plan.blockdevs]
        out.append(("-device", plan.device))
    taps = rec.runtime.get("taps", {})
    for vif in rec.config.vifs:
        assert vif.devid is not None
        p = nicdev.plan(vif, vif.devid, taps[str(vif.devid)], dtype,
                        layout.slots[nicdev.qdev_id(vif.devid)],
                        boot.get(nicdev.qdev_id(vif.devid)))
        out += [("-netdev", p.netdev), ("-device", p.device)]
    for bdf in rec.config.pci:
        out.append(("-device", {"driver": "vfio-pci", "host": bdf, "id": hostdev_id(bdf),
                                "bus": layout.slots[hostdev_id(bdf)]}))
    out += xldevices.usb_args(rec.config, layout.slots)
    out += vscsi.vscsi_args(rec.config, layout.slots)
    return layout, out


def hostdev_id(bdf: str) -> str:
    return "hostdev-" + bdf.replace(":", "-").replace(".", "-")

