"""Netlink (pyroute2) for the network code: links, bridges, taps, addresses, routes.

Thin functions over an open pyroute2 IPRoute, so NetworkManager reads as the steps it
takes. pyroute2's sync IPRoute runs an event loop of its own and so cannot be used in a
thread that runs one: NetworkManager calls these on a worker thread of its own.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from xenia.errors import BackendError
from xenia.network.subnet import Claim

AF_INET = 2
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
TUN_TYPE_TAP = 2
# An IFF_TAP | IFF_NO_PI | IFF_VNET_HDR device, single queue: QEMU's -netdev tap opens it
# with the same flags (a multi-queue open of a single-queue device would fail).
TAP_FLAGS = {"no_pi": True, "vnet_hdr": True, "one_queue": False, "multi_queue": False}
# Bridges: without STP a port forwards at once; a zero delay also makes a later STP
# switch-on not hold new guests 30 s in listening/learning (xl's vif-bridge sets it too).
BRIDGE_OPTS = {"br_forward_delay": 0}


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str  # "bridge", "tun" (tap or tun), "veth", "ifb", "" for plain NICs
    master: int | None
    mtu: int
    address: str
    up: bool
    carrier: bool
    is_tap: bool
    alias: str | None

    @classmethod
    def from_msg(cls, msg: Any) -> Link:
        info = msg.get_attr("IFLA_LINKINFO")
        kind = (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or ""
        data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
        is_tap = kind == "tun" and data is not None and \
            data.get_attr("IFLA_TUN_TYPE") == TUN_TYPE_TAP
        flags = int(msg["flags"])
        return cls(index=int(msg["index"]), name=msg.get_attr("IFLA_IFNAME"), kind=kind,
                   master=msg.get_attr("IFLA_MASTER"), mtu=int(msg.get_attr("IFLA_MTU") or 0),
                   address=str(msg.get_attr("IFLA_ADDRESS") or ""),
                   up=bool(flags & IFF_UP), carrier=bool(flags & IFF_LOWER_UP), is_tap=is_tap,
                   alias=msg.get_attr("IFLA_IFALIAS"))


def links(ipr: Any) -> list[Link]:
    return [Link.from_msg(m) for m in ipr.get_links()]


def link(ipr: Any, name: str) -> Link | None:
    found = ipr.link_lookup(ifname=name)
    if not found:
        return None
    try:
        return Link.from_msg(ipr.get_links(found[0])[0])
    except Exception:  # noqa: BLE001 - gone between lookup and get: same as not found
        return None


def ports(ipr: Any, bridge: Link) -> list[Link]:
    return [lk for lk in links(ipr) if lk.master == bridge.index]


def _created(ipr: Any, name: str) -> Link:
    made = link(ipr, name)
    if made is None:  # someone deleted it right away
        raise BackendError(f"Failed to create device '{name}': it vanished right after")
    return made


def create_bridge(ipr: Any, name: str) -> Link:
    ipr.link("add", ifname=name, kind="bridge", **BRIDGE_OPTS)
    return _created(ipr, name)


def set_up(ipr: Any, index: int) -> None:
    ipr.link("set", index=index, state="up")


def enslave(ipr: Any, index: int, bridge: Link) -> None:
    ipr.link("set", index=index, master=bridge.index)


def delete_link(ipr: Any, name: str) -> bool:
    """Delete device `name`; False if there was none."""
    found = ipr.link_lookup(ifname=name)
    for index in found:
        ipr.link("del", index=index)
    return bool(found)


def create_tap(ipr: Any, name: str, uid: int = 0, gid: int | None = 0) -> Link:
    """A persistent tap (it stays when QEMU closes it, until unplug), owned by `uid`:
    the confined QEMU's user, who may then attach to it without CAP_NET_ADMIN. With
    `gid` None the tap has no group: the kernel then checks the owner alone (with a
    group, a process must match both)."""
    owner: dict[str, int] = {"uid": uid} if gid is None else {"uid": uid, "gid": gid}
    ipr.link("add", ifname=name, kind="tuntap", mode="tap", ifr=TAP_FLAGS, **owner)
    return _created(ipr, name)


def ipv4_addresses(ipr: Any, index: int | None = None) -> list[ipaddress.IPv4Interface]:
    kw = {"index": index} if index is not None else {}
    return [ipaddress.IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
            for a in ipr.get_addr(family=AF_INET, **kw)]


def has_global_address(ipr: Any, index: int) -> str | None:
    """An IPv4 or global IPv6 address on device `index`, or None (link-local is fine)."""
    for a in ipr.get_addr(index=index):
        addr = ipaddress.ip_address(a.get_attr("IFA_ADDRESS"))
        if addr.version == 4 or not addr.is_link_local:
            return f"{addr}/{a['prefixlen']}"
    return None


def add_address(ipr: Any, index: int, iface: ipaddress.IPv4Interface) -> None:
    """Add `iface` to device `index` unless it has it already."""
    if iface in ipv4_addresses(ipr, index):
        return
    ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen,
             broadcast=str(iface.network.broadcast_address))


def claims(ipr: Any) -> list[Claim]:
    """What IPv4 space the host uses: every route but default ones, every address."""
    names = {lk.index: lk.name for lk in links(ipr)}
    found: list[Claim] = []
    for r in ipr.get_routes(family=AF_INET):
        if not r["dst_len"]:
            continue
        net = ipaddress.IPv4Network(f"{r.get_attr('RTA_DST')}/{r['dst_len']}", strict=False)
        dev = names.get(r.get_attr("RTA_OIF"), "")
        found.append(Claim(net, f"the host route to {net}" + (f" on {dev}" if dev else "")))
    for a in ipr.get_addr(family=AF_INET):
        iface = ipaddress.IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
        found.append(Claim(iface.network,
                           f"the address {iface} of {names.get(a['index'], '?')}"))
    return found


def fdb_macs(ipr: Any) -> list[tuple[str, int]]:
    """(MAC, port ifindex) of every bridge forwarding entry: guests seen behind ports."""
    out = []
    for e in ipr.fdb("dump"):
        mac = e.get_attr("NDA_LLADDR")
        if mac and e.get_attr("NDA_MASTER") is not None:
            out.append((str(mac).lower(), int(e["ifindex"])))
    return out


def stats64(ipr: Any, index: int) -> dict[str, int]:
    msg = ipr.get_links(index)[0]
    stats = msg.get_attr("IFLA_STATS64") or msg.get_attr("IFLA_STATS") or {}
    return {k: int(stats.get(k, 0)) for k in ("rx_bytes", "rx_packets", "tx_bytes",
                                              "tx_packets", "rx_dropped", "tx_dropped",
                                              "rx_errors", "tx_errors")}
