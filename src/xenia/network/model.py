"""NetworkRecord: what the store keeps of a network ("network" documents)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network
from typing import Any

from xenia.network.subnet import gateway

KIND = "network"


@dataclass
class NetworkRecord:
    name: str
    type: str  # "bridge": plain bridge like xenbr0; "nat": routed, masqueraded, DHCP
    bridge: str  # the bridge device; today always equal to name
    subnet: str | None = None  # nat: "10.122.0.0/24"
    uplink: str | None = None  # bridge: the host NIC enslaved to it, if any
    dhcp: bool = False
    created_at: float = 0.0
    # Set before teardown starts: a xeniad that dies halfway finishes the delete on start.
    deleting: bool = False

    @property
    def net(self) -> IPv4Network | None:
        return IPv4Network(self.subnet) if self.subnet else None

    @property
    def address(self) -> IPv4Interface | None:
        """The bridge's own address (the guests' gateway and DNS server), nat only."""
        net = self.net
        return IPv4Interface(f"{gateway(net)}/{net.prefixlen}") if net else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetworkRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
