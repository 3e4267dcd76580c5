"""snapshot-create, snapshot-list, snapshot-revert, snapshot-delete (xl has none; the
names follow virsh's)."""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import click

from xenia.cli.base import Ctx, cli, out, pass_ctx


def _url(dom: str, snap: str | None = None) -> str:
    url = f"/v1/domain-snapshots/{quote(dom, safe='')}"
    return url if snap is None else f"{url}/{quote(snap, safe='')}"


@cli.command("snapshot-create")
@click.option("--memory", is_flag=True,
              help="Also keep the guest's memory: a revert resumes it where it was.")
@click.argument("dom")
@click.argument("name")
@pass_ctx
def snapshot_create(c: Ctx, memory: bool, dom: str, name: str) -> None:
    """Snapshot a running domain's disks (and memory) as NAME."""
    s = c.client.post(f"/v1/domains/{quote(dom, safe='')}/snapshots",
                      {"name": name, "memory": memory}, timeout=None)
    out(f"Snapshot '{s['name']}' of {s['domain']} created ({len(s['disks'])} disk(s)"
        f"{', memory' if s['memory'] else ''}; guest stopped {s['stopped_seconds']:.2f} s)")


@cli.command("snapshot-list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.argument("dom")
@pass_ctx
def snapshot_list(c: Ctx, as_json: bool, dom: str) -> None:
    """List the snapshots of domain DOM (also of one that no longer runs)."""
    snaps = c.client.get(_url(dom))
    if as_json:
        out(json.dumps(snaps, indent=2))
        return
    out(f"{'NAME':20} {'CREATED':20} {'MEMORY':6} DISKS")
    for s in snaps:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["created_at"]))
        out(f"{s['name']:20} {when:20} {'yes' if s['memory'] else 'no':6} "
            f"{','.join(sorted(s['disks'])) or '-'}")


@cli.command("snapshot-revert")
@click.argument("dom")
@click.argument("name")
@pass_ctx
def snapshot_revert(c: Ctx, dom: str, name: str) -> None:
    """Put DOM back to snapshot NAME (a --memory one also restarts the guest from it)."""
    r = c.client.post(f"{_url(dom, name)}/revert", {}, timeout=None)
    out(f"Reverted {dom} to '{name}'" + (" (running)" if r["running"] else ""))


@cli.command("snapshot-delete")
@click.argument("dom")
@click.argument("name")
@pass_ctx
def snapshot_delete(c: Ctx, dom: str, name: str) -> None:
    """Delete snapshot NAME of DOM."""
    c.client.delete(_url(dom, name))
    out(f"Snapshot '{name}' of {dom} deleted")
