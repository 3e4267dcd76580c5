"""NetworkManager: the networks of this host and the host side of guest NICs.

Networks (store documents of kind "network", see model.py):
- "bridge": a plain Linux bridge like Xen's xenbr0: no address, no NAT, optionally a
  host NIC as uplink. Guests on it are on that NIC's LAN (or on a host-only segment).
- "nat": a bridge with the first address of its subnet, IPv4 forwarding, masquerading
  to the host's other interfaces (nft.py) and DHCP + DNS from a dnsmasq bound to the
  bridge only (dnsmasq.py), as libvirt's default network.

Guest NICs (for the domain engine; xl's vif-bridge script in Xen):
    check_vif(vif)           before anything is started: raises if plug() would
    tap = tap_name(domid, devid, vif.vifname)
    plug(tap, vif)           persistent tap on the bridge, MTU, MAC, rate limit
    ... QEMU: -netdev tap,ifname=<tap>,script=no,downscript=no (vhost=on if wanted) ...
    unplug(tap)              when the guest is gone (idempotent)

Everything outlives xeniad: stop() tears nothing down, start() restores what a reboot
removed (bridges, addresses, nft tables, dnsmasq) and adopts what still runs.

Every public method but start()/stop() blocks briefly (netlink: milliseconds; creating or
deleting a NAT network: up to seconds for dnsmasq) and is thread-safe: the work runs on
one worker thread of the manager, which also serialises all changes. pyroute2's sync API
cannot run in a thread with a running event loop, so even calls from the event loop
thread are safe (they wait for the worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from xenia.config.model import VifSpec
from xenia.errors import AlreadyExists, BackendError, InUse, InvalidConfig, NotFound, XeniaError
from xenia.network import mac as macs
from xenia.network import netlink as nl
from xenia.network import ratelimit, subnet, veth
from xenia.network.dnsmasq import Dnsmasq, DnsmasqFiles
from xenia.network.model import KIND, NetworkRecord
from xenia.network.names import DEFAULT_BRIDGE, check_ifname
from xenia.network.names import tap_name as _tap_name
from xenia.network.nft import Nft
from xenia.paths import Paths
from xenia.store.base import Store

log = logging.getLogger(__name__)

T = TypeVar("T")

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
# A tap's MTU range (tun's min and max).
MTU_MIN, MTU_MAX = 68, 65521


def _check_name_free(ipr: Any, name: str, doing: str) -> None:
    """A new host-side device needs a name no link has yet."""
    if nl.link(ipr, name) is not None:
        raise InUse(f"Failed {doing}: a device named '{name}' exists already; pick another "
                    "vifname= (or, if a crashed domain left it, delete it: "
                    f"`ip link del {name}`)")


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    """Run a rollback step; log, never raise (the original error is what matters)."""
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - rollback must go on
        log.warning("rollback step %s failed: %s", getattr(fn, "__name__", fn), e)


@contextlib.contextmanager
def _kernel_errors(doing: str) -> Iterator[None]:
    """Netlink and OS errors become "Failed <doing>: <cause>"."""
    try:
        yield
    except NetlinkError as e:
        cause = os.strerror(e.code) if e.code else str(e)
        raise BackendError(f"Failed {doing}: {cause}") from e
    except OSError as e:
        raise BackendError(f"Failed {doing}: {e.strerror or e}") from e


class NetworkManager:
    def __init__(self, paths: Paths, store: Store, nft: Nft | None = None) -> None:
        self.paths = paths
        self.store = store
        self.nft = nft or Nft()
        # Owner (uid, gid) of the taps plug() makes: QEMU's user (drivers/qemu.py sets it).
        self.tap_owner: tuple[int, int | None] = (0, 0)
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        # Set in the worker thread only: a call from there runs directly (no deadlock).
        self._local = threading.local()

    # -- the worker thread ---------------------------------------------------------------
    def _mark_worker(self) -> None:
        self._local.worker = True

    def _pool(self) -> ThreadPoolExecutor:
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="xenia-net", initializer=self._mark_worker)
            return self._executor

    def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if getattr(self._local, "worker", False):
            return fn(*args, **kwargs)
        return self._pool().submit(fn, *args, **kwargs).result()

    # -- daemon --------------------------------------------------------------------------
    async def start(self) -> None:
        """Called once when xeniad starts: restore every network after a host reboot.

        Recreates missing bridges (with address and uplink), re-applies NAT rules
        (atomically; a no-op when they are there), adopts a running dnsmasq by its pidfile
        or starts one, finishes deletes a crash cut short, and removes rate-limit devices
        whose tap is gone. A network that cannot be restored is logged, not fatal.
        """
        await asyncio.get_running_loop().run_in_executor(self._pool(), self._restore_all)

    async def stop(self) -> None:
        """Called once when xeniad stops. Tears nothing down: guests keep their network."""
        with self._executor_lock:
            pool, self._executor = self._executor, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, True)

    # -- networks ------------------------------------------------------------------------
    def create_network(self, name: str, *, nat: bool = False, subnet: str | None = None,
                       interface: str | None = None) -> dict[str, Any]:
        """Create a network; returns it as get_network() shows it.

        nat=False: a plain bridge; `interface` is a host NIC to enslave as its uplink (it
        must carry no address: Xenia does not move a live address, which could cut the
        host off). nat=True: a NAT network on `subnet` (default: a free 10.x.y.0/24).
        """
        return self._run(self._create, name, nat, subnet, interface)

    def delete_network(self, name: str) -> None:
        """Delete a network: dnsmasq, NAT rules, bridge, files. InUse while taps are on it."""
        self._run(self._delete, name)

    def list_networks(self, include_host: bool = False) -> list[dict[str, Any]]:
        """Every network, as get_network() shows one; include_host adds the host's
        bridges Xenia did not make (type "host": guests may use them, delete refuses)."""
        return self._run(self._list, include_host)

    def get_network(self, name: str) -> dict[str, Any]:
        """One network: name, bridge, type ("bridge", "nat"; "host" for host bridges in
        list_networks(include_host=True)), subnet, address, dhcp, dnsmasq_pid, uplink,
        taps, ports, mtu, state ("active", "degraded", "missing", "deleting") and the
        problems behind a state other than active."""
        return self._run(self._get, name)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) on the network worker thread: pyroute2 cannot run on the event
        loop's thread (drivers/qemu_drvdom.py's bridges go through here)."""
        return self._run(fn, *args)

    # -- guest NICs ----------------------------------------------------------------------
    @staticmethod
    def tap_name(domid: int, devid: int, vifname: str | None = None) -> str:
        """The tap of a vif: the user's vifname (checked), else xl's `vif<domid>.<devid>`."""
        return _tap_name(domid, devid, vifname)

    @staticmethod
    def generate_mac() -> str:
        """A random guest MAC 00:16:3e:xx:xx:xx (Xen's OUI, libxl's range)."""
        return macs.generate_mac()

    def check_vif(self, vif: VifSpec) -> None:
        """Raise if plug() could not attach `vif`: missing bridge (bridge None: xenbr0),
        a device that is no bridge, bad vifname, MTU, MAC or a rate tc cannot express.

        A bridge Xenia did not create is fine, as with Xen's vif-bridge script; a Xenia
        network whose bridge is missing is fine too (plug brings it back).
        """
        self._run(self._check_vif, vif)

    def plug(self, tap: str, vif: VifSpec, owner: tuple[int, int | None] | None = None
             ) -> None:
        """Create the host side of a guest NIC, ready for QEMU's `-netdev tap,ifname=TAP`.

        A persistent tap `tap` (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, single queue, owned by
        `owner`, or else tap_owner: the uid and group of the domain's QEMU), MAC fe:xx
        (the guest's vif.mac with first byte fe, if given), MTU vif.mtu or the bridge's,
        enslaved to the bridge, up, and vif.rate applied to both directions
        (ratelimit.py). InUse if a device `tap` exists or another tap on this host
        carries vif.mac; on any failure, nothing is left behind.
        """
        self._run(self._plug, tap, vif, owner or self.tap_owner)

    def unplug(self, tap: str) -> None:
        """Delete the tap and its rate-limit device. Idempotent; refuses a non-tap device."""
        self._run(self._unplug, tap)

    def plug_veth(self, host: str, vif: VifSpec, netns_pid: int, guest: str) -> None:
        """The NIC of a container: a veth pair, `host` on the vif's bridge as a tap would
        be (MTU, MAC fe:..., rate limit, up), `guest` made inside the network namespace of
        process `netns_pid` with vif.mac (the container brings it up). On any failure
        nothing is left behind. See veth.py; tap_stats() reads the host end too."""
        self._run(self._plug_veth, host, vif, netns_pid, guest)

    def unplug_veth(self, host: str) -> None:
        """Delete a container NIC by its host end (and its rate-limit device). Idempotent:
        the kernel deletes a pair whose namespace is gone."""
        self._run(self._unplug_veth, host)

    def tap_stats(self, tap: str) -> dict[str, int]:
        """Traffic counters from the guest's side: rx_* = the tap's tx, tx_* = its rx.

        Keys: rx_bytes, rx_packets, tx_bytes, tx_packets, rx_dropped, tx_dropped,
        rx_errors, tx_errors.
        """
        return self._run(self._tap_stats, tap)

    def mac_in_use(self, mac: str, ignore_tap: str | None = None) -> str | None:
        """Who on this host uses guest MAC `mac`, or None.

        Looks for a host device with that MAC, a tap of ours carrying it (fe:... of it)
        and a bridge forwarding entry learned on a tap (a guest that set it itself).
        MACs learned on an uplink (other machines) do not count: a guest migrating in
        is still seen there. `ignore_tap`: the vif's own tap.
        """
        return self._run(self._mac_in_use, mac, ignore_tap)

    def check_mac(self, mac: str, ignore_tap: str | None = None) -> None:
        """InUse "duplicate MAC" if mac_in_use finds a user."""
        self._run(self._check_mac, mac, ignore_tap)

    # == implementation (on the worker thread) ===========================================
    def _dirs(self, name: str) -> tuple[Path, Path]:
        return self.paths.run / "networks" / name, self.paths.state / "networks" / name

    def _dnsmasq(self, rec: NetworkRecord) -> Dnsmasq:
        run_dir, state_dir = self._dirs(rec.name)
        net = rec.net
        assert net is not None, "only nat networks have a dnsmasq"
        return Dnsmasq(rec.name, rec.bridge, net, DnsmasqFiles.under(run_dir, state_dir))

    def _record(self, name: str, doing: str) -> NetworkRecord:
        doc = self.store.obj_get(KIND, name) if isinstance(name, str) else None
        if doc is None:
            raise NotFound(f"Failed {doing}: there is no network '{name}' "
                           "(see `xenia network list`)")
        return NetworkRecord.from_dict(doc)

    # -- create --------------------------------------------------------------------------
    def _create(self, name: str, nat: bool, subnet_text: str | None,
                interface: str | None) -> dict[str, Any]:
        doing = f"to create network '{name}'"
        check_ifname(name, "network name", doing)
        if nat and interface:
            raise InvalidConfig(f"Failed {doing}: --interface is for plain bridges; a NAT "
                                "network reaches out through the host's routes")
        if subnet_text and not nat:
            raise InvalidConfig(f"Failed {doing}: --subnet needs --nat (a plain bridge has "
                                "no address of its own)")
        if self.store.obj_get(KIND, name) is not None:
            raise AlreadyExists(f"Failed {doing}: it exists already (see `xenia network list`)")
        with IPRoute() as ipr, _kernel_errors(doing):
            existing = nl.link(ipr, name)
            if existing is not None:
                hint = (f"; guests can use that bridge as it is (vif = ['bridge={name}'])"
                        if existing.kind == "bridge" else "; pick another name")
                raise AlreadyExists(f"Failed {doing}: this host has a device named '{name}' "
                                    f"already{hint}")
            rec = NetworkRecord(name=name, type="nat" if nat else "bridge", bridge=name,
                                dhcp=nat, created_at=time.time())
            if nat:
                rec.subnet = str(self._choose_subnet(ipr, subnet_text, doing))
            if interface:
                rec.uplink = self._check_uplink(ipr, interface, doing).name
            # Claim the name in the store first: it is also the record of what to clean
            # up should xeniad die halfway (start() then restores it; delete removes it).
            self.store.obj_put(KIND, name, rec.to_dict(), create=True)
            with contextlib.ExitStack() as undo:
                undo.callback(_quietly, self.store.obj_delete, KIND, name)
                undo.callback(_quietly, self._remove_files, name)
                self._bring_up(ipr, rec, doing, undo)
                undo.pop_all()
            log.info("created network %s (%s%s)", name, rec.type,
                     f", {rec.subnet}" if rec.subnet else "")
            return self._describe(ipr, rec)

    def _choose_subnet(self, ipr: Any, text: str | None, doing: str) -> IPv4Network:
        claims = [subnet.Claim(IPv4Network(r["subnet"]), f"network '{r['name']}'")
                  for r in self.store.obj_list(KIND) if r.get("subnet")]
        claims += nl.claims(ipr)
        if text is None:
            picked = subnet.pick_free(claims)
            if picked is None:
                raise InUse(f"Failed {doing}: no free 10.x.y.0/24 on this host; give one "
                            "with --subnet")
            return picked
        net = subnet.parse_subnet(text, doing)
        clash = subnet.first_overlap(net, claims)
        if clash is not None:
            raise InUse(f"Failed {doing}: subnet {net} overlaps {clash.owner}; pick another "
                        "with --subnet, or leave it out to get a free one")
        return net

    def _check_uplink(self, ipr: Any, interface: str, doing: str) -> nl.Link:
        check_ifname(interface, "interface", doing)
        up = nl.link(ipr, interface)
        if up is None:
            raise NotFound(f"Failed {doing}: there is no interface '{interface}' on this host")
        if interface == "lo" or up.kind in ("bridge", "tun", "ifb"):
            raise InvalidConfig(f"Failed {doing}: '{interface}' ({up.kind or 'loopback'}) "
                                "cannot be a bridge's uplink; name a NIC, VLAN or bond")
        if up.master is not None:
            raise InUse(f"Failed {doing}: '{interface}' is a port of another device "
                        f"(ifindex {up.master}) already")
        addr = nl.has_global_address(ipr, up.index)
        if addr is not None:
            raise InUse(
                f"Failed {doing}: '{interface}' carries the address {addr}, which stops "
                "working once it is a bridge port, and Xenia does not move a live address "
                "(it could cut this host off); set the bridge up in the host's network "
                f"config (e.g. `bridge_ports {interface}` in /etc/network/interfaces) and "
                "use it from guests as it is, or name an interface without addresses")
        return up

    # -- bring up / restore ------------------------------------------------------------
    def _bring_up(self, ipr: Any, rec: NetworkRecord, doing: str,
                  undo: contextlib.ExitStack | None = None) -> None:
        """Make the network as the record says; every step is idempotent.

        With `undo` (create), each step registers its rollback; without (restore), what
        exists already is adopted.
        """
        br = nl.link(ipr, rec.bridge)
        recreated = br is None
        if br is None:
            br = nl.create_bridge(ipr, rec.bridge)
            if undo is not None:
                undo.callback(_quietly, nl.delete_link, ipr, rec.bridge)
        elif br.kind != "bridge":
            raise InUse(f"Failed {doing}: device '{rec.bridge}' exists but is a "
                        f"{br.kind or 'network'} device, not a bridge")
        if rec.uplink:
            self._attach_uplink(ipr, rec, br)
        address = rec.address
        if address is not None:
            nl.add_address(ipr, br.index, address)
        nl.set_up(ipr, br.index)
        if rec.type != "nat":
            return
        net = rec.net
        assert net is not None
        _enable_forwarding()
        self.nft.apply(rec.name, rec.bridge, net)
        if undo is not None:
            undo.callback(_quietly, self.nft.remove, rec.name)
        dns = self._dnsmasq(rec)
        if undo is not None:
            undo.callback(_quietly, dns.stop)
        # A dnsmasq that outlived its bridge has sockets bound to the old device.
        pid = dns.ensure(restart=recreated)
        log.info("network %s: dnsmasq pid %d", rec.name, pid)

    def _attach_uplink(self, ipr: Any, rec: NetworkRecord, br: nl.Link) -> None:
        assert rec.uplink is not None
        up = nl.link(ipr, rec.uplink)
        if up is None:
            log.warning("network %s: uplink %s is missing; the bridge is host-only until it "
                        "is back and xeniad restarts", rec.name, rec.uplink)
            return
        if up.master == br.index:
            nl.set_up(ipr, up.index)
            return
        if up.master is not None or nl.has_global_address(ipr, up.index):
            log.warning("network %s: uplink %s is in use elsewhere (a port of another device "
                        "or it has an address); not attaching it", rec.name, rec.uplink)
            return
        nl.enslave(ipr, up.index, br)
        nl.set_up(ipr, up.index)

    def _restore_all(self) -> None:
        with IPRoute() as ipr:
            for doc in self.store.obj_list(KIND):
                rec = NetworkRecord.from_dict(doc)
                doing = f"to restore network '{rec.name}'"
                try:
                    with _kernel_errors(doing):
                        if rec.deleting:
                            self._tear_down(ipr, rec)
                            self.store.obj_delete(KIND, rec.name)
                            log.info("finished deleting network %s", rec.name)
                        else:
                            self._bring_up(ipr, rec, doing)
                except XeniaError as e:
                    log.error("%s", e.message)
            with _kernel_errors("to clean up rate-limit devices"):
                self._sweep_ifbs(ipr)

    def _sweep_ifbs(self, ipr: Any) -> None:
        """Delete our IFBs whose device is gone (deleted by hand, not through unplug)."""
        all_links = nl.links(ipr)
        indexes = {lk.index for lk in all_links}
        for lk in all_links:
            owner = ratelimit.ifb_owner(lk.name)
            if lk.kind == "ifb" and owner is not None and owner not in indexes \
                    and (lk.alias or "").startswith(ratelimit.IFB_ALIAS):
                log.info("removing %s: its device is gone", lk.name)
                nl.delete_link(ipr, lk.name)

    # -- delete --------------------------------------------------------------------------
    def _delete(self, name: str) -> None:
        doing = f"to delete network '{name}'"
        rec = self._record(name, doing)
        with IPRoute() as ipr, _kernel_errors(doing):
            br = nl.link(ipr, rec.bridge)
            if br is not None and br.kind == "bridge":
                taps = [p.name for p in nl.ports(ipr, br) if p.is_tap]
                if taps:
                    shown = ", ".join(taps[:5]) + (", ..." if len(taps) > 5 else "")
                    raise InUse(f"Failed {doing}: {len(taps)} tap{'s' * (len(taps) != 1)} "
                                f"{'are' if len(taps) != 1 else 'is'} attached ({shown}); "
                                "destroy those domains or detach their vifs first")
            rec.deleting = True
            self.store.obj_put(KIND, name, rec.to_dict())
            self._tear_down(ipr, rec)
        # Record last: if xeniad dies before, start() finishes the delete.
        self.store.obj_delete(KIND, name)
        log.info("deleted network %s", name)

    def _tear_down(self, ipr: Any, rec: NetworkRecord) -> None:
        if rec.type == "nat":
            self._dnsmasq(rec).stop()
            self.nft.remove(rec.name)
        br = nl.link(ipr, rec.bridge)
        if br is not None and br.kind == "bridge":
            # Deleting a bridge releases its ports (the uplink stays as it was).
            nl.delete_link(ipr, rec.bridge)
        self._remove_files(rec.name)

    def _remove_files(self, name: str) -> None:
        for d in self._dirs(name):
            shutil.rmtree(d, ignore_errors=True)

    # -- list / describe -------------------------------------------------------------------
    def _describe(self, ipr: Any, rec: NetworkRecord, all_links: list[nl.Link] | None = None
                  ) -> dict[str, Any]:
        all_links = nl.links(ipr) if all_links is None else all_links
        br = next((lk for lk in all_links if lk.name == rec.bridge), None)
        problems: list[str] = []
        ports: list[nl.Link] = []
        if br is None or br.kind != "bridge":
            problems.append("bridge missing")
        else:
            ports = [lk for lk in all_links if lk.master == br.index]
            if not br.up:
                problems.append("bridge down")
            address = rec.address
            if address is not None and address not in nl.ipv4_addresses(ipr, br.index):
                problems.append(f"address {address} missing")
            if rec.uplink and rec.uplink not in [p.name for p in ports]:
                problems.append(f"uplink {rec.uplink} not attached")
        pid = None
        if rec.type == "nat":
            pid = self._dnsmasq(rec).pid()
            if pid is None:
                problems.append("dnsmasq not running")
            if not self.nft.exists(rec.name):
                problems.append("NAT rules missing")
        state = ("deleting" if rec.deleting else "active" if not problems
                 else "missing" if "bridge missing" in problems else "degraded")
        address = rec.address
        return {
            "name": rec.name,
            "bridge": rec.bridge,
            "type": rec.type,
            "subnet": rec.subnet,
            "address": str(address) if address is not None else None,
            "dhcp": rec.dhcp,
            "dnsmasq_pid": pid,
            "uplink": rec.uplink,
            "taps": [p.name for p in ports if p.is_tap],
            "ports": [p.name for p in ports],
            "mtu": br.mtu if br is not None else None,
            "state": state,
            "problems": problems,
            "managed": True,
            "created_at": rec.created_at,
        }

    def _host_bridge(self, all_links: list[nl.Link], br: nl.Link) -> dict[str, Any]:
        ports = [lk for lk in all_links if lk.master == br.index]
        return {"name": br.name, "bridge": br.name, "type": "host", "subnet": None,
                "address": None, "dhcp": False, "dnsmasq_pid": None, "uplink": None,
                "taps": [p.name for p in ports if p.is_tap], "ports": [p.name for p in ports],
                "mtu": br.mtu, "state": "active" if br.up else "down", "problems": [],
                "managed": False, "created_at": None}

    def _list(self, include_host: bool) -> list[dict[str, Any]]:
        with IPRoute() as ipr, _kernel_errors("to list networks"):
            all_links = nl.links(ipr)
            recs = [NetworkRecord.from_dict(d) for d in self.store.obj_list(KIND)]
            out = [self._describe(ipr, r, all_links) for r in recs]
            if include_host:
                mine = {r.bridge for r in recs}
                out += [self._host_bridge(all_links, lk) for lk in all_links
                        if lk.kind == "bridge" and lk.name not in mine]
            return sorted(out, key=lambda d: d["name"])

    def _get(self, name: str) -> dict[str, Any]:
        rec = self._record(name, f"to find network '{name}'")
        with IPRoute() as ipr, _kernel_errors(f"to read network '{name}'"):
            return self._describe(ipr, rec)

    # -- vifs ------------------------------------------------------------------------------
    def _check_vif_spec(self, vif: VifSpec, doing: str) -> str:
        """Checks of `vif` that need no kernel; returns its bridge name."""
        bridge = vif.bridge or DEFAULT_BRIDGE
        check_ifname(bridge, "bridge", doing)
        if vif.vifname:
            check_ifname(vif.vifname, "vifname", doing)
        if vif.mtu is not None and not MTU_MIN <= vif.mtu <= MTU_MAX:
            raise InvalidConfig(f"Failed {doing}: mtu {vif.mtu} is out of range "
                                f"({MTU_MIN} to {MTU_MAX})")
        if vif.mac:
            macs.check_guest_mac(vif.mac)
        if vif.rate is not None:
            ratelimit.plan_rate(vif.rate, vif.mtu or 1500, doing)
        return bridge

    def _find_bridge(self, ipr: Any, bridge: str, doing: str, restore: bool) -> nl.Link | None:
        """The bridge device; None for a Xenia network whose bridge is gone (unless
        `restore`: then it is brought back). NotFound / InvalidConfig otherwise."""
        br = nl.link(ipr, bridge)
        if br is None:
            doc = self.store.obj_get(KIND, bridge)
            if doc is None:
                raise NotFound(f"Failed {doing}: bridge '{bridge}' does not exist; create it "
                               f"with `xenia network create {bridge}`")
            if not restore:
                return None
            log.warning("network %s: bridge missing; restoring it", bridge)
            self._bring_up(ipr, NetworkRecord.from_dict(doc), doing)
            br = nl.link(ipr, bridge)
            if br is None:
                raise BackendError(f"Failed {doing}: bridge '{bridge}' could not be restored")
        if br.kind != "bridge":
            raise InvalidConfig(f"Failed {doing}: '{bridge}' is not a bridge but a "
                                f"{br.kind or 'network'} device; name a bridge with bridge= "
                                "(see `xenia network list --all`)")
        return br

    def _check_vif(self, vif: VifSpec) -> None:
        doing = "to attach vif"
        bridge = self._check_vif_spec(vif, doing)
        with IPRoute() as ipr, _kernel_errors(doing):
            self._find_bridge(ipr, bridge, doing, restore=False)

    def _plug(self, tap: str, vif: VifSpec, owner: tuple[int, int | None]) -> None:
        doing = f"to attach vif {tap}"
        check_ifname(tap, "tap name", doing)
        bridge = self._check_vif_spec(vif, doing)
        with IPRoute() as ipr, _kernel_errors(doing), contextlib.ExitStack() as undo:
            br = self._find_bridge(ipr, bridge, doing, restore=True)
            assert br is not None
            _check_name_free(ipr, tap, doing)
            guest_mac = macs.check_guest_mac(vif.mac) if vif.mac else None
            if guest_mac is not None:
                self._check_mac(guest_mac, tap, ipr)
            t = nl.create_tap(ipr, tap, *owner)
            undo.callback(_quietly, self._remove_tap, ipr, t)
            mtu = vif.mtu or br.mtu
            settings: dict[str, Any] = {"mtu": mtu}
            if guest_mac is not None:
                settings["address"] = macs.tap_mac(guest_mac)
            ipr.link("set", index=t.index, **settings)
            nl.enslave(ipr, t.index, br)
            if vif.rate is not None:
                plan = ratelimit.apply_rate(ipr, t.index, tap, vif.rate, mtu)
                log.info("vif %s: rate %d B/s, burst %d B (both directions)", tap, plan.rate,
                         plan.burst)
            nl.set_up(ipr, t.index)
            undo.pop_all()
        log.info("vif %s attached to %s (mtu %d)", tap, bridge, mtu)

    def _remove_tap(self, ipr: Any, t: nl.Link) -> None:
        ratelimit.clear_rate(ipr, t.index)
        nl.delete_link(ipr, t.name)

    def _unplug(self, tap: str) -> None:
        doing = f"to detach vif {tap}"
        check_ifname(tap, "tap name", doing)
        with IPRoute() as ipr, _kernel_errors(doing):
            t = nl.link(ipr, tap)
            if t is None:
                return
            if not t.is_tap:
                raise InvalidConfig(f"Failed {doing}: '{tap}' is a {t.kind or 'network'} "
                                    "device, not a tap; not deleting it")
            self._remove_tap(ipr, t)

    def _plug_veth(self, host: str, vif: VifSpec, netns_pid: int, guest: str) -> None:
        doing = f"to attach vif {host}"
        check_ifname(host, "vif name", doing)
        check_ifname(guest, "guest interface name", doing)
        bridge = self._check_vif_spec(vif, doing)
        if not vif.mac:
            raise InvalidConfig(f"Failed {doing}: the vif has no MAC yet")
        guest_mac = macs.check_guest_mac(vif.mac)
        with IPRoute() as ipr, _kernel_errors(doing), contextlib.ExitStack() as undo:
            br = self._find_bridge(ipr, bridge, doing, restore=True)
            assert br is not None
            _check_name_free(ipr, host, doing)
            self._check_mac(guest_mac, host, ipr)
            mtu = vif.mtu or br.mtu
            try:
                link = veth.create_pair(ipr, host, guest, netns_pid, guest_mac,
                                        macs.tap_mac(guest_mac), mtu)
            except ProcessLookupError as e:
                raise BackendError(f"Failed {doing}: the container's network namespace "
                                   f"is gone ({e})") from e
            undo.callback(_quietly, veth.remove, ipr, host)
            nl.enslave(ipr, link.index, br)
            if vif.rate is not None:
                plan = ratelimit.apply_rate(ipr, link.index, host, vif.rate, mtu)
                log.info("vif %s: rate %d B/s, burst %d B (both directions)", host, plan.rate,
                         plan.burst)
            nl.set_up(ipr, link.index)
            undo.pop_all()
        log.info("vif %s (veth, %s in the container) attached to %s (mtu %d)", host, guest,
                 bridge, mtu)

    def _unplug_veth(self, host: str) -> None:
        doing = f"to detach vif {host}"
        check_ifname(host, "vif name", doing)
        with IPRoute() as ipr, _kernel_errors(doing):
            try:
                veth.remove(ipr, host)
            except ValueError as e:
                raise InvalidConfig(f"Failed {doing}: {e}; not deleting it") from e

    def _tap_stats(self, tap: str) -> dict[str, int]:
        doing = f"to read the counters of vif {tap}"
        check_ifname(tap, "tap name", doing)
        with IPRoute() as ipr, _kernel_errors(doing):
            t = nl.link(ipr, tap)
            if t is None:
                raise NotFound(f"Failed {doing}: there is no device '{tap}'")
            s = nl.stats64(ipr, t.index)
        return {"rx_bytes": s["tx_bytes"], "rx_packets": s["tx_packets"],
                "tx_bytes": s["rx_bytes"], "tx_packets": s["rx_packets"],
                "rx_dropped": s["tx_dropped"], "tx_dropped": s["rx_dropped"],
                "rx_errors": s["tx_errors"], "tx_errors": s["rx_errors"]}

    def _mac_in_use(self, mac: str, ignore_tap: str | None, ipr: Any = None) -> str | None:
        mac = macs.normalize_mac(mac)
        if ipr is None:
            with IPRoute() as own, _kernel_errors(f"to look for MAC {mac}"):
                return self._mac_in_use(mac, ignore_tap, own)
        on_tap = macs.tap_mac(mac)
        all_links = nl.links(ipr)
        taps = {lk.index: lk.name for lk in all_links if lk.is_tap and lk.name != ignore_tap}
        for lk in all_links:
            if lk.name == ignore_tap:
                continue
            if lk.address == mac:
                return f"host device {lk.name}"
            if lk.is_tap and lk.address == on_tap:
                return f"vif {lk.name}"
        for learned, port in nl.fdb_macs(ipr):
            if learned == mac and port in taps:
                return f"the guest behind vif {taps[port]}"
        return None

    def _check_mac(self, mac: str, ignore_tap: str | None, ipr: Any = None) -> None:
        who = self._mac_in_use(mac, ignore_tap, ipr)
        if who is not None:
            raise InUse(f"Failed to attach vif: MAC {macs.normalize_mac(mac)} is used by {who} "
                        "on this host already; give the vif another mac=, or leave mac= out "
                        "to get a generated one")


def _enable_forwarding() -> None:
    """Route between interfaces (for NAT). Left on at delete: other things may need it."""
    try:
        if IP_FORWARD.read_text().strip() != "1":
            IP_FORWARD.write_text("1\n")
            log.info("enabled IPv4 forwarding (net.ipv4.ip_forward=1)")
    except OSError as e:
        raise BackendError(f"Failed to enable IPv4 forwarding ({IP_FORWARD}): "
                           f"{e.strerror or e}") from e
