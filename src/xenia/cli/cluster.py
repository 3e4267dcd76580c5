"""`xenia cluster ...`: init, token, join, status, leave, remove. The cluster's host verbs
(`xenia host evacuate`, `xenia host maintenance`) are in hosts.py, on the host group."""

from __future__ import annotations

import json
from typing import Any

import click

from xenia.cli.base import Ctx, cli, out, pass_ctx, warn
from xenia.cli.hosts import table


@cli.group()
def cluster() -> None:
    """A cluster of Xenia hosts on etcd: one view, placement, evacuation."""


@cluster.command("init")
@click.option("--name", help="This member's name (default: the host name).")
@click.option("--address", help="This host's cluster IP address (default: xeniad's --listen).")
@click.option("--cluster", "cluster_name", default="xenia", show_default=True,
              help="The cluster's name.")
@click.option("--etcd-voters", type=int, default=5, show_default=True,
              help="At most this many members run an etcd voter (odd, 3..7); the members "
              "that join past it are etcd clients.")
@pass_ctx
def init(c: Ctx, name: str | None, address: str | None, cluster_name: str,
         etcd_voters: int) -> None:
    """Make a new cluster with this host as its first member."""
    ans = c.client.post("/v1/cluster/init", {"name": name, "address": address,
                                             "cluster": cluster_name,
                                             "etcd_voters": etcd_voters}, timeout=120)
    out(f"cluster '{ans['cluster']}' made; this host is member '{ans['name']}' "
        f"({ans['address']}). Add hosts: `xenia cluster token` here, then `xenia cluster "
        "join` there.")


@cluster.command("token")
@pass_ctx
def token(c: Ctx) -> None:
    """Print a single-use token another host joins with."""
    ans = c.client.post("/v1/cluster/token")
    out(ans["token"])
    warn(f"on the joining host: xenia cluster join {ans['address']} --token TOKEN "
         f"(single use; revoke with `xenia host token revoke {ans['name']}`)")


@cluster.command("join")
@click.argument("address")
@click.option("--token", "join_token", required=True, help="The token `xenia cluster token` "
              "printed on a member.")
@click.option("--name", help="This member's name (default: the host name).")
@click.option("--address", "own_address",
              help="This host's cluster IP address (default: xeniad's --listen).")
@pass_ctx
def join(c: Ctx, address: str, join_token: str, name: str | None,
         own_address: str | None) -> None:
    """Join the cluster of the member at ADDRESS (HOST:PORT of its xeniad)."""
    ans = c.client.post("/v1/cluster/join", {"address": address, "token": join_token,
                                             "name": name, "own_address": own_address},
                        timeout=180)
    out(f"joined cluster '{ans['cluster']}' as '{ans['name']}' (admitted by "
        f"{ans['admitted_by']}; etcd {ans.get('etcd_role', 'voter')})")


def _lease(h: dict[str, Any]) -> str:
    if h.get("lease_ttl") is not None:
        return f"{h['lease_ttl']}s"
    return "held" if h.get("alive") else "-"


def _state(h: dict[str, Any]) -> str:
    words = []
    if h.get("fenced"):
        words.append("fenced")
    if h.get("maintenance"):
        words.append("maintenance")
    if h.get("etcd_healthy") is False:
        words.append("etcd down")
    age = h.get("facts_age")
    if age is None:
        words.append("never seen")
    elif age > 15:
        words.append(f"silent {age:.0f}s")
    return ",".join(words) or "ok"


def format_status(st: dict[str, Any]) -> list[str]:
    lines = [f"cluster {st.get('cluster') or '?'}; this host: {st['name']}"]
    seats = st.get("etcd_voters") or {}
    voters = f"; {seats['have']} of {seats['want']} etcd voters" if seats else ""
    if st["quorum"]:
        lines.append("etcd: quorum ok; leader " + str(st["etcd"].get("leader") or "?")
                     + voters)
    else:
        lines.append("etcd: QUORUM LOST - failover decisions are stopped; running domains "
                     "keep running")
    if st.get("hold"):
        lines.append(f"this host: {st['hold']['state']} (HA domains kept running: "
                     f"{st['hold'].get('why', '')})")
    lines.append(f"HA leader: {st.get('leader') or '-'}")
    rows = [[("*" if h["this"] else "") + h["name"], str(h.get("address") or "-"),
             _lease(h), "-" if h.get("free_mib") is None else f"{h['free_mib']} MiB",
             str(h["domains"]), str(h.get("etcd") or "-"), _state(h)] for h in st["hosts"]]
    lines += table(["Host", "Address", "Lease", "Free", "Domains", "Etcd", "State"], rows)
    bad = [m for m in st["etcd"].get("members", []) if not m.get("healthy")]
    for m in bad:
        lines.append(f"etcd member {m['name']} ({m.get('url') or '-'}): "
                     f"{m.get('error') or 'unhealthy'}")
    return lines


@cluster.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def status(c: Ctx, as_json: bool) -> None:
    """Members, etcd health and leader, leases, free memory, domains, maintenance."""
    st = c.client.get("/v1/cluster")
    if as_json:
        out(json.dumps(st, indent=2))
        return
    if not st.get("member"):
        out("this host is not a cluster member (`xenia cluster init` or `xenia cluster join`)")
        return
    for line in format_status(st):
        out(line)


@cluster.command("leave")
@pass_ctx
def leave(c: Ctx) -> None:
    """Leave the cluster (this host's domains stay here, outside the cluster)."""
    ans = c.client.post("/v1/cluster/leave", timeout=120)
    out(f"'{ans['name']}' left the cluster ({ans['members_left']} members remain)")


@cluster.command("remove")
@click.argument("name")
@pass_ctx
def remove(c: Ctx, name: str) -> None:
    """Remove a dead member NAME from the cluster."""
    c.client.post("/v1/cluster/remove", {"host": name}, timeout=60)
    out(f"removed '{name}'")
