"""IPv4 subnets of NAT networks: parsing, overlap checks, picking a free one, DHCP range.

Pure functions; what the host already uses (routes, addresses) is gathered by the caller
(netlink.py) and handed in as `Claim`s, so all of this is unit-testable.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from xenia.errors import InvalidConfig

# /30 is the smallest with room for the bridge's address and one guest.
MIN_PREFIX, MAX_PREFIX = 8, 30
DEFAULT_PREFIX = 24
# Where the search for a free /24 starts (122: libvirt's 192.168.122.0/24, moved into 10/8
# as asked); it then walks all of 10.0.0.0/8, wrapping around.
_PICK_START = 122


@dataclass(frozen=True)
class Claim:
    """A piece of address space the host already uses, and who uses it (for messages)."""

    net: IPv4Network
    owner: str


def parse_subnet(text: str, doing: str) -> IPv4Network:
    """`text` ("10.1.2.0/24") as a network; InvalidConfig unless it is a usable one."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as e:
        raise InvalidConfig(f"Failed {doing}: invalid subnet '{text}' ({e}); give it as "
                            "ADDRESS/PREFIX with the host bits zero, e.g. 10.10.0.0/24") from e
    if not isinstance(net, IPv4Network):
        raise InvalidConfig(f"Failed {doing}: subnet '{text}' is IPv6; NAT networks are IPv4 "
                            "for now (e.g. 10.10.0.0/24)")
    if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
        raise InvalidConfig(f"Failed {doing}: subnet '{text}' has prefix /{net.prefixlen}; "
                            f"use /{MIN_PREFIX} to /{MAX_PREFIX}")
    if net.is_loopback or net.is_multicast or net.is_link_local or net.is_unspecified \
            or net.is_reserved:
        raise InvalidConfig(f"Failed {doing}: subnet '{text}' is a special-purpose range; use a "
                            "private one (10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16)")
    return net


def first_overlap(net: IPv4Network, claims: Iterable[Claim]) -> Claim | None:
    for claim in claims:
        if net.overlaps(claim.net):
            return claim
    return None


def _candidates() -> Iterator[IPv4Network]:
    for i in range(256):
        x = (_PICK_START + i) % 256
        for y in range(256):
            yield IPv4Network(f"10.{x}.{y}.0/{DEFAULT_PREFIX}")


def pick_free(claims: Iterable[Claim]) -> IPv4Network | None:
    """The first 10.x.y.0/24 that overlaps no claim, or None if 10/8 is all taken."""
    taken = sorted({c.net for c in claims if c.net.prefixlen > 0},
                   key=lambda n: (int(n.network_address), n.prefixlen))
    for cand in _candidates():
        if not any(cand.overlaps(t) for t in taken):
            return cand
    return None


def gateway(net: IPv4Network) -> IPv4Address:
    """The bridge's address: the first of the subnet, as libvirt and most routers do."""
    return net.network_address + 1


def dhcp_range(net: IPv4Network) -> tuple[IPv4Address, IPv4Address]:
    """Every address after the gateway up to the last before broadcast."""
    return net.network_address + 2, net.broadcast_address - 1


def dhcp_size(net: IPv4Network) -> int:
    start, end = dhcp_range(net)
    return int(end) - int(start) + 1
