"""The NAT of a network: one nftables table of its own, `ip xenia-<network>`.

Everything a network needs lives in that table, so deleting the table removes exactly
what was added and touches no one else's rules. It is written as nft's JSON (`nft -j -f
-`): no name is spliced into a rule language, and one batch replaces the whole table
atomically (add, delete, add: the first add makes the delete succeed when it is new).

- postrouting (nat): traffic from the subnet leaving through any other interface is
  masqueraded; multicast and broadcast are left alone, as libvirt does.
- forward (filter): the subnet may go out and answers may come back; new connections
  from outside into the subnet, and spoofed sources from the bridge, are rejected. A
  drop in another table's forward chain (Docker, ufw's DROP policy) still wins: nftables
  runs every base chain of a hook and one drop is final. See docs/decisions.md.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Network
from typing import Any

from xenia.errors import BackendError
from xenia.tools import find_tool, run_tool

FAMILY = "ip"
TABLE_PREFIX = "xenia-"


def table_name(network: str) -> str:
    return TABLE_PREFIX + network


def _prefix(net: IPv4Network) -> dict[str, Any]:
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _addr(field: str) -> dict[str, Any]:
    return {"payload": {"protocol": "ip", "field": field}}


def ruleset(network: str, bridge: str, subnet: IPv4Network) -> dict[str, Any]:
    """The JSON batch that (re)creates the network's table with its two chains."""
    table = table_name(network)
    tref = {"family": FAMILY, "name": table}
    comment = f"xenia network {network}"
    sub = _prefix(subnet)

    def rule(chain: str, *expr: dict[str, Any]) -> dict[str, Any]:
        return {"add": {"rule": {"family": FAMILY, "table": table, "chain": chain,
                                 "expr": list(expr), "comment": comment}}}

    def chain(name: str, type_: str, hook: str, prio: int) -> dict[str, Any]:
        return {"add": {"chain": {"family": FAMILY, "table": table, "name": name,
                                  "type": type_, "hook": hook, "prio": prio,
                                  "policy": "accept"}}}

    from_sub = _match(_addr("saddr"), sub)
    return {"nftables": [
        {"add": {"table": tref}},
        {"delete": {"table": tref}},
        {"add": {"table": tref}},
        # srcnat (100) and filter (0), the standard priorities.
        chain("postrouting", "nat", "postrouting", 100),
        chain("forward", "filter", "forward", 0),
        rule("postrouting", from_sub,
             _match(_addr("daddr"), _prefix(IPv4Network("224.0.0.0/24"))), {"return": None}),
        rule("postrouting", from_sub,
             _match(_addr("daddr"), "255.255.255.255"), {"return": None}),
        rule("postrouting", from_sub, _match(_addr("daddr"), sub, "!="),
             _match(_meta("oifname"), bridge, "!="), {"masquerade": None}),
        # Guest to guest on the bridge (seen here when br_netfilter is loaded).
        rule("forward", _match(_meta("iifname"), bridge),
             _match(_meta("oifname"), bridge), {"accept": None}),
        rule("forward", _match(_meta("iifname"), bridge), from_sub, {"accept": None}),
        rule("forward", _match(_meta("oifname"), bridge), _match(_addr("daddr"), sub),
             _match({"ct": {"key": "state"}}, ["established", "related"], "in"),
             {"accept": None}),
        rule("forward", _match(_meta("iifname"), bridge), {"reject": None}),
        rule("forward", _match(_meta("oifname"), bridge), {"reject": None}),
    ]}


def removal(network: str) -> dict[str, Any]:
    """The JSON batch that deletes the network's table, also when there is none."""
    tref = {"family": FAMILY, "name": table_name(network)}
    return {"nftables": [{"add": {"table": tref}}, {"delete": {"table": tref}}]}


class Nft:
    """Runs the `nft` binary (package nftables) with JSON batches on stdin."""

    def __init__(self, binary: str | None = None) -> None:
        self._binary = binary

    def binary(self, doing: str) -> str:
        if self._binary is None:
            self._binary = find_tool("nft", "nftables", doing)
        return self._binary

    def apply(self, network: str, bridge: str, subnet: IPv4Network) -> None:
        doing = f"to set up NAT for network '{network}'"
        run_tool([self.binary(doing), "-j", "-f", "-"], doing,
                 input=json.dumps(ruleset(network, bridge, subnet)))

    def remove(self, network: str) -> None:
        doing = f"to remove the NAT rules of network '{network}'"
        run_tool([self.binary(doing), "-j", "-f", "-"], doing, input=json.dumps(removal(network)))

    def exists(self, network: str) -> bool:
        doing = f"to read the NAT rules of network '{network}'"
        try:
            run_tool([self.binary(doing), "-j", "list", "table", FAMILY, table_name(network)],
                     doing)
        except BackendError:  # "No such file or directory": there is no such table
            return False
        return True
