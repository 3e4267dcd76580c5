"""The host side of driver domains: two private bridges a driver domain, and their fence.

A driver domain (xl.cfg `driver_domain = 1`) with link number N gets:

- `xdds<N>`, the storage link: the host holds 169.254.N.1/30 on it and the driver domain
  169.254.N.2/30. The front ends' QEMUs (on the host) connect from here to the NBD
  servers in the driver domain. No other device is on it.
- `xddn<N>`, the driver domain's switch: no host address; the front ends' NICs with
  `backend=` that domain are plugged in, and so is one NIC of the driver domain, which
  routes or bridges them (a router or firewall guest).

The nftables table `ip xenia-driverlinks` keeps the driver domains off the host: on
any `xdd*` device only answers to connections the host opened come in, and nothing is
forwarded to or from one. With br_netfilter loaded, frames bridged inside one switch pass
the forward hook too; those are let through.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Interface, IPv4Network
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from xenia.errors import BackendError
from xenia.network import netlink as nl
from xenia.network.nft import Nft
from xenia.tools import run_tool

PREFIX = "xdd"
MAX_LINKS = 256
TABLE = "xenia-driverlinks"
# The NBD port of a driver domain's disk vdX: BASE_PORT + X's index (vda: 10809).
BASE_PORT = 10809


def storage_bridge(n: int) -> str:
    return f"{PREFIX}s{n}"


def switch_bridge(n: int) -> str:
    return f"{PREFIX}n{n}"


def link_subnet(n: int) -> IPv4Network:
    return IPv4Network(f"169.254.{n}.0/30")


def host_address(n: int) -> IPv4Interface:
    return IPv4Interface(f"169.254.{n}.1/30")


def guest_address(n: int) -> IPv4Interface:
    return IPv4Interface(f"169.254.{n}.2/30")


def ruleset() -> dict[str, Any]:
    """The JSON batch that (re)creates the fence table (nft -j -f -)."""
    tref = {"family": "ip", "name": TABLE}
    wild = f"{PREFIX}*"

    def rule(chain: str, *expr: dict[str, Any]) -> dict[str, Any]:
        return {"add": {"rule": {"family": "ip", "table": TABLE, "chain": chain,
                                 "expr": list(expr)}}}

    def match(key: str, right: Any) -> dict[str, Any]:
        return {"match": {"op": "==", "left": {"meta": {"key": key}}, "right": right}}

    def chain(name: str) -> dict[str, Any]:
        return {"add": {"chain": {"family": "ip", "table": TABLE, "name": name,
                                  "type": "filter", "hook": name, "prio": 0,
                                  "policy": "accept"}}}

    answers = {"match": {"op": "in", "left": {"ct": {"key": "state"}},
                         "right": ["established", "related"]}}
    return {"nftables": [
        {"add": {"table": tref}}, {"delete": {"table": tref}}, {"add": {"table": tref}},
        chain("input"), chain("forward"),
        rule("input", match("iifname", wild), answers, {"accept": None}),
        rule("input", match("iifname", wild), {"drop": None}),
        # Bridged inside one switch (seen here only with br_netfilter).
        rule("forward", match("iifname", f"{PREFIX}n*"), match("oifname", f"{PREFIX}n*"),
             {"accept": None}),
        rule("forward", match("iifname", wild), {"drop": None}),
        rule("forward", match("oifname", wild), {"drop": None}),
    ]}


def removal() -> dict[str, Any]:
    tref = {"family": "ip", "name": TABLE}
    return {"nftables": [{"add": {"table": tref}}, {"delete": {"table": tref}}]}


def _apply(nft: Nft, batch: dict[str, Any], doing: str) -> None:
    run_tool([nft.binary(doing), "-j", "-f", "-"], doing, input=json.dumps(batch))


def bring_up(n: int, nft: Nft) -> None:
    """Create (or keep) link N's two bridges, the host address and the fence. The fence
    goes first: the storage bridge never carries the host address unfenced."""
    doing = f"to set up driver domain link {n}"
    _apply(nft, ruleset(), doing)
    try:
        with IPRoute() as ipr:
            for name in (storage_bridge(n), switch_bridge(n)):
                br = nl.link(ipr, name) or nl.create_bridge(ipr, name)
                if br.kind != "bridge":
                    raise BackendError(f"Failed {doing}: '{name}' exists and is not a bridge")
                if name == storage_bridge(n):
                    nl.add_address(ipr, br.index, host_address(n))
                nl.set_up(ipr, br.index)
    except NetlinkError as e:
        raise BackendError(f"Failed {doing}: {e}") from e


def tear_down(n: int, nft: Nft, last: bool) -> None:
    """Delete link N's bridges; `last`: no link is left, so the fence goes too."""
    doing = f"to remove driver domain link {n}"
    try:
        with IPRoute() as ipr:
            for name in (storage_bridge(n), switch_bridge(n)):
                nl.delete_link(ipr, name)
    except NetlinkError as e:
        raise BackendError(f"Failed {doing}: {e}") from e
    if last:
        _apply(nft, removal(), doing)
