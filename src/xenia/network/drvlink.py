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
from pathlib import Path
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


def ruleset(down: list[str]) -> dict[str, Any]:
    """The JSON batch that (re)creates the fence table (nft -j -f -). `down`: the link
    addresses of driver domains that are not running: the host's packets to them are
    answered with a TCP reset, so a front end's NBD client learns at its next packet that
    the server is gone (its connection would otherwise wait for TCP's timeout, minutes)
    and reconnect-delay starts counting."""
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
    batch: list[dict[str, Any]] = [
        {"add": {"table": tref}}, {"delete": {"table": tref}}, {"add": {"table": tref}},
        chain("input"), chain("forward"), chain("output"),
        rule("input", match("iifname", wild), answers, {"accept": None}),
        rule("input", match("iifname", wild), {"drop": None}),
        # Bridged inside one switch (seen here only with br_netfilter).
        rule("forward", match("iifname", f"{PREFIX}n*"), match("oifname", f"{PREFIX}n*"),
             {"accept": None}),
        rule("forward", match("iifname", wild), {"drop": None}),
        rule("forward", match("oifname", wild), {"drop": None}),
    ]
    for addr in sorted(down):
        batch.append(rule("output", match("l4proto", "tcp"),
                          {"match": {"op": "==", "left": {"payload": {
                              "protocol": "ip", "field": "daddr"}}, "right": addr}},
                          {"reject": {"type": "tcp reset"}}))
    return {"nftables": batch}


def removal() -> dict[str, Any]:
    tref = {"family": "ip", "name": TABLE}
    return {"nftables": [{"add": {"table": tref}}, {"delete": {"table": tref}}]}


def fence(nft: Nft, down: list[str] | None) -> None:
    """Apply the fence with these down addresses; None: no link is left, remove it."""
    doing = "to set up the driver domain links' firewall"
    batch = removal() if down is None else ruleset(down)
    run_tool([nft.binary(doing), "-j", "-f", "-"], doing, input=json.dumps(batch))


def present_links() -> set[int]:
    """Link numbers whose bridges exist on this host (from /sys: no netlink needed)."""
    found = set()
    for name in ("s", "n"):
        for dev in Path("/sys/class/net").glob(f"{PREFIX}{name}*"):
            number = dev.name[len(PREFIX) + 1:]
            if number.isdigit():
                found.add(int(number))
    return found


def bring_up(n: int) -> None:
    """Create (or keep) link N's two bridges and the host address. Call fence() first:
    the storage bridge must never carry the host address unfenced."""
    doing = f"to set up driver domain link {n}"
    try:
        with IPRoute() as ipr:
            for name in (storage_bridge(n), switch_bridge(n)):
                br = nl.link(ipr, name) or nl.create_bridge(ipr, name)
                if br.kind != "bridge":
                    raise BackendError(f"Failed {doing}: '{name}' exists and is not a bridge")
                if name == storage_bridge(n):
                    nl.add_address(ipr, br.index, host_address(n))
                nl.set_up(ipr, br.index)
    except (NetlinkError, OSError) as e:
        raise BackendError(f"Failed {doing}: {e}") from e


def tear_down(n: int) -> None:
    """Delete link N's bridges."""
    doing = f"to remove driver domain link {n}"
    try:
        with IPRoute() as ipr:
            for name in (storage_bridge(n), switch_bridge(n)):
                nl.delete_link(ipr, name)
    except (NetlinkError, OSError) as e:
        raise BackendError(f"Failed {doing}: {e}") from e
