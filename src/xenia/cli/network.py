"""`xenia network create|list|show|delete`: bridges (like xenbr0) and NAT networks."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import click

from xenia.cli.base import Ctx, cli, out, pass_ctx

LIST_COLUMNS = (("NAME", 15), ("BRIDGE", 15), ("TYPE", 6), ("SUBNET", 18), ("DHCP", 4),
                ("TAPS", 4), ("STATE", 8))


def _url(name: str) -> str:
    return "/v1/networks/" + quote(name, safe="")


def format_table(rows: list[dict[str, Any]]) -> list[str]:
    """The lines `xenia network list` prints: a header, one row a network."""
    def line(cells: list[str]) -> str:
        return " ".join(f"{c:<{w}}" for c, (_, w) in zip(cells, LIST_COLUMNS, strict=True)
                        ).rstrip()

    lines = [line([h for h, _ in LIST_COLUMNS])]
    for r in rows:
        lines.append(line([
            r["name"], r["bridge"], r["type"], r.get("subnet") or "-",
            "yes" if r.get("dhcp") else "no", str(len(r.get("taps", []))), r["state"],
        ]))
    return lines


@cli.group()
def network() -> None:
    """Networks for guests: plain bridges (like xenbr0) and NAT networks with DHCP."""


@network.command("create")
@click.argument("name")
@click.option("--nat", is_flag=True,
              help="Routed NAT network with DHCP and DNS (like libvirt's default).")
@click.option("--subnet", metavar="CIDR",
              help="Subnet of a --nat network, e.g. 10.10.0.0/24 (default: a free 10.x.y.0/24).")
@click.option("--interface", metavar="NIC",
              help="Host NIC to enslave as the uplink of a plain bridge (it must have no "
                   "address).")
@pass_ctx
def create(c: Ctx, name: str, nat: bool, subnet: str | None, interface: str | None) -> None:
    """Create network NAME (its bridge is also called NAME)."""
    n = c.client.post("/v1/networks", {"name": name, "nat": nat, "subnet": subnet,
                                       "interface": interface}, timeout=120.0)
    if n["type"] == "nat":
        out(f"Created NAT network {n['name']}: bridge {n['bridge']}, address {n['address']}, "
            f"DHCP on {n['subnet']}")
    else:
        uplink = f", uplink {n['uplink']}" if n.get("uplink") else ""
        out(f"Created bridge {n['bridge']}{uplink}")


@network.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("-a", "--all", "all_", is_flag=True,
              help="Also list the host's bridges Xenia did not create.")
@pass_ctx
def list_(c: Ctx, as_json: bool, all_: bool) -> None:
    """List networks: name, bridge, type, subnet, DHCP, taps attached, state."""
    rows: list[dict[str, Any]] = c.client.get("/v1/networks" + ("?all=true" if all_ else ""))
    if as_json:
        out(json.dumps(rows, indent=2))
        return
    for text in format_table(rows):
        out(text)


@network.command("show")
@click.argument("name")
@pass_ctx
def show(c: Ctx, name: str) -> None:
    """Show one network as JSON (ports, dnsmasq pid, problems)."""
    out(json.dumps(c.client.get(_url(name)), indent=2))


@network.command("delete")
@click.argument("name")
@pass_ctx
def delete(c: Ctx, name: str) -> None:
    """Delete network NAME (refused while guests' taps are attached)."""
    c.client.delete(_url(name))
