"""veth pairs: the NICs of container domains (netlink helpers for NetworkManager.plug_veth).

A container's vif is a veth pair: the host end, named like a VM's tap (`vif<domid>.<devid>`
or `vifname=`), is a bridge port exactly as a tap is (MTU, MAC fe:..., rate limit); the
other end is created directly inside the container's network namespace (by the pid of a
process in it), named ethN and carrying the vif's MAC. When the namespace goes (the
container's last process exits) the kernel deletes both ends; only a rate-limit IFB of
the host end can outlive it, and `remove` finds that by its alias.
"""

from __future__ import annotations

from typing import Any

from xenia.network import netlink as nl
from xenia.network import ratelimit

# The kernel's name of the guest end, inside the container.
GUEST_PREFIX = "eth"


def guest_name(index: int) -> str:
    return f"{GUEST_PREFIX}{index}"


def create_pair(ipr: Any, host: str, guest: str, netns_pid: int, guest_mac: str,
                host_mac: str, mtu: int) -> nl.Link:
    """Make the pair: `host` here, `guest` in the network namespace of `netns_pid`.

    Both ends get `mtu`; the guest end `guest_mac`, the host end `host_mac`. Returns the
    host end (down, not on a bridge yet).
    """
    ipr.link("add", ifname=host, kind="veth", address=host_mac, mtu=mtu,
             peer={"ifname": guest, "net_ns_pid": netns_pid, "address": guest_mac, "mtu": mtu})
    made = nl.link(ipr, host)
    if made is None:  # the namespace died at once and took the pair with it
        raise ProcessLookupError(f"veth {host} vanished right after it was made")
    return made


def remove(ipr: Any, host: str) -> bool:
    """Delete the pair by its host end, and its rate-limit IFB; False if there was neither.

    The IFB of a pair the kernel deleted already is found by its alias (and by its owner
    being gone, so another device's IFB is never touched). A device `host` that is not a
    veth is left alone: ValueError.
    """
    found = False
    link = nl.link(ipr, host)
    if link is not None:
        if link.kind != "veth":
            raise ValueError(f"'{host}' is a {link.kind or 'network'} device, not a veth")
        ratelimit.clear_rate(ipr, link.index)
        nl.delete_link(ipr, host)
        found = True
    all_links = nl.links(ipr)
    indexes = {lk.index for lk in all_links}
    for lk in all_links:
        owner = ratelimit.ifb_owner(lk.name)
        if lk.kind == "ifb" and lk.alias == ratelimit.IFB_ALIAS + host and \
                owner is not None and owner not in indexes:
            nl.delete_link(ipr, lk.name)
            found = True
    return found
