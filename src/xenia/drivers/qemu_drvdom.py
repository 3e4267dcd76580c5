"""DriverLinks: driver domains (xl.cfg `driver_domain = 1`) and the devices they serve.

A driver domain gets a link number N, kept in the store by its name so that a restarted
driver domain comes back on the same addresses (its front ends' QEMUs reconnect to
them). At create it gets two NICs more than its config names, after its own: ethK on
the storage link `xdds<N>` (169.254.N.2/30, `xenia.ip.ethK=` on its kernel command line)
and ethK+1 on its switch `xddn<N>` (network/drvlink.py). `xenia.nbd=ADDR` on the command
line asks the driver-domain image to serve each of its disks /dev/vdX over NBD on ADDR,
port 10809 + X's index, export name vdX.

A front end's disk `backend=DOM,target=/dev/vdX` is QEMU's NBD client to that server; a
vif `backend=DOM` is a tap on DOM's switch. Both need DOM running as a driver domain when
the front end starts. The bridges of link N stay while the driver domain or any of its
front ends exists (a restarting driver domain finds them), and go with the last one.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from typing import Any

from xenia.config.model import DiskSpec, VifSpec
from xenia.devices import disk as diskdev
from xenia.errors import InvalidConfig, NotFound, XeniaError
from xenia.network import drvlink
from xenia.network.manager import NetworkManager
from xenia.network.nft import Nft
from xenia.store.base import DomainRecord, Store
from xenia.store.state import RUNNING

log = logging.getLogger("xenia.drvdom")

KIND = "driverlink"  # store objects: driver domain name -> {"n": link number}
LINK_VIF = "driver domain storage link"
SWITCH_VIF = "driver domain switch"
_TARGET_RE = re.compile(r"/dev/vd([a-z])\Z")


def is_driver_domain(rec: DomainRecord) -> bool:
    return bool(rec.config.driver_domain)


def vif_backend(vif: VifSpec) -> str | None:
    if vif.backend is None or vif.backend in diskdev.HOST_BACKENDS:
        return None
    return vif.backend


def export_of(spec: DiskSpec, domain: str) -> tuple[str, int]:
    """(export name, port) of a driver domain's disk named by a front end's target=."""
    m = _TARGET_RE.match(spec.target or "")
    if m is None:
        raise InvalidConfig(
            f"Failed to attach disk {spec.vdev} to '{domain}': target '{spec.target}' is not "
            f"a disk of driver domain '{spec.backend}'; name one of its virtio disks as it "
            "sees them, /dev/vda to /dev/vdz (its xvda is /dev/vda)")
    return f"vd{m.group(1)}", drvlink.BASE_PORT + ord(m.group(1)) - ord("a")


class DriverLinks:
    def __init__(self, store: Store, network: NetworkManager | None) -> None:
        self.store = store
        self.nft = network.nft if network is not None else Nft()
        self.network = network

    def _net(self, fn: Callable[..., None], *args: Any) -> None:
        """Netlink work on the network worker thread (pyroute2 needs its own loop)."""
        if self.network is not None:
            self.network.call(fn, *args)
        else:
            fn(*args)

    # -- link numbers --------------------------------------------------------------------
    def number(self, name: str) -> int | None:
        doc = self.store.obj_get(KIND, name)
        return int(doc["n"]) if doc is not None else None

    def allocate(self, name: str) -> int:
        n = self.number(name)
        if n is not None:
            return n
        taken = {int(d["n"]) for d in self.store.obj_list(KIND)}
        # Bridges are the host's, the store this xeniad's: skip a number whose bridges
        # exist (another xeniad's driver domain on this host, or a crash's leftovers).
        present = drvlink.present_links()
        free = [i for i in range(drvlink.MAX_LINKS) if i not in taken and i not in present]
        if not free:
            raise XeniaError(f"Failed to create driver domain '{name}': all "
                             f"{drvlink.MAX_LINKS} driver domain links are taken")
        self.store.obj_put(KIND, name, {"name": name, "n": free[0]}, create=True)
        return free[0]

    # -- checks --------------------------------------------------------------------------
    def backend(self, rec: DomainRecord, name: str, what: str) -> int:
        """The link number of running driver domain `name`, which serves `what` of `rec`."""
        doing = f"Failed to attach {what} to '{rec.name}'"
        if name == rec.name:
            raise InvalidConfig(f"{doing}: a domain cannot be its own backend")
        other = next((r for r in self.store.list() if r.name == name), None)
        if other is None or other.state != RUNNING:
            state = "does not exist" if other is None else f"is {other.state}"
            raise NotFound(f"{doing}: its backend domain '{name}' {state}; start the driver "
                           "domain first (backend domains must run before their front ends)")
        n = self.number(name)
        if not is_driver_domain(other) or n is None:
            raise InvalidConfig(f"{doing}: domain '{name}' is not a driver domain; set "
                                "driver_domain = 1 in its config and restart it")
        return n

    def check(self, rec: DomainRecord) -> None:
        """Refuse a front end whose backends are not running driver domains."""
        for spec in rec.config.disks:
            if not diskdev.is_remote(spec):
                continue
            what = f"disk {spec.vdev}"
            if spec.is_cdrom or spec.format != "raw":
                raise InvalidConfig(f"Failed to attach {what} to '{rec.name}': a disk a "
                                    "driver domain serves is a raw disk (format=raw, no cdrom)")
            export_of(spec, rec.name)
            assert spec.backend is not None
            self.backend(rec, spec.backend, what)
        for vif in rec.config.vifs:
            name = vif_backend(vif)
            if name is not None:
                self.backend(rec, name, f"vif {vif.mac or vif.devid or ''}".strip())

    # -- the driver domain's own side ----------------------------------------------------
    def prepare(self, rec: DomainRecord) -> None:
        """A driver domain's link number and its two extra NICs (once, at create)."""
        if not is_driver_domain(rec):
            return
        n = self.allocate(rec.name)
        have = {v.bridge for v in rec.config.vifs}
        for bridge, spec in ((drvlink.storage_bridge(n), LINK_VIF),
                             (drvlink.switch_bridge(n), SWITCH_VIF)):
            if bridge not in have:
                rec.config.vifs.append(VifSpec(bridge=bridge, spec=spec))

    def fence(self, up: DomainRecord | None = None, gone: DomainRecord | None = None) -> None:
        """Apply the fence: every link whose driver domain is not running (or is `gone`;
        `up` is starting) is down, and the host resets its connections to it."""
        links = self.store.obj_list(KIND)
        if not links:
            drvlink.fence(self.nft, None)
            return
        running = {r.name for r in self.store.list()
                   if r.state == RUNNING and is_driver_domain(r)}
        if up is not None:
            running.add(up.name)
        if gone is not None:
            running.discard(gone.name)
        drvlink.fence(self.nft, [str(drvlink.guest_address(int(d["n"])).ip) for d in links
                                 if d["name"] not in running])

    def bring_up(self, rec: DomainRecord) -> None:
        """Before the taps: a driver domain's bridges exist (made, or kept), fenced."""
        if is_driver_domain(rec):
            n = self.number(rec.name)
            assert n is not None, "prepare() gave it a link"
            self.fence(up=rec)
            self._net(drvlink.bring_up, n)

    def kernel_params(self, rec: DomainRecord) -> list[str]:
        """A driver domain's link address and NBD server, for the driver-domain image."""
        n = self.number(rec.name) if is_driver_domain(rec) else None
        if n is None:
            return []
        bridges = [v.bridge for v in rec.config.vifs]
        k = bridges.index(drvlink.storage_bridge(n))
        addr = drvlink.guest_address(n)
        return [f"xenia.ip.eth{k}={addr}", f"xenia.ip.eth{k + 1}=off", f"xenia.nbd={addr.ip}"]

    # -- the front end's side ------------------------------------------------------------
    def host_vif(self, rec: DomainRecord, vif: VifSpec) -> VifSpec:
        """The vif as the host plugs it: on its backend's switch when it has one."""
        name = vif_backend(vif)
        if name is None:
            return vif
        n = self.backend(rec, name, f"vif {vif.devid}")
        return dataclasses.replace(vif, bridge=drvlink.switch_bridge(n))

    def remote_disks(self, rec: DomainRecord) -> dict[str, dict[str, str | int]]:
        """vdev -> the NBD server (host, port, export) of each disk a driver domain serves."""
        out: dict[str, dict[str, str | int]] = {}
        for spec in rec.config.disks:
            if diskdev.is_remote(spec):
                assert spec.backend is not None
                n = self.backend(rec, spec.backend, f"disk {spec.vdev}")
                export, port = export_of(spec, rec.name)
                out[spec.vdev] = {"host": str(drvlink.guest_address(n).ip), "port": port,
                                  "export": export}
        return out

    # -- teardown ------------------------------------------------------------------------
    def collect(self, gone: DomainRecord) -> None:
        """After domain `gone` stopped: remove the links nobody uses any more."""
        users: set[str] = set()
        involved = is_driver_domain(gone)
        for r in self.store.list():
            backends = {d.backend for d in r.config.disks if diskdev.is_remote(d)}
            backends |= {b for v in r.config.vifs if (b := vif_backend(v)) is not None}
            if r.uuid == gone.uuid:
                involved = involved or bool(backends)
                continue
            users |= backends  # type: ignore[arg-type]
            if is_driver_domain(r):
                users.add(r.name)
        if not involved:
            return
        for doc in self.store.obj_list(KIND):
            if doc["name"] in users:
                continue
            try:
                self._net(drvlink.tear_down, int(doc["n"]))
            except XeniaError as e:
                log.warning("driver domain link %s: %s", doc["n"], e)
                continue
            self.store.obj_delete(KIND, doc["name"])
        try:
            self.fence(gone=gone)
        except XeniaError as e:
            log.warning("driver domain links: %s", e)
