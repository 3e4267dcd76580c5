"""`xenia pool ...` and `xenia volume ...` (xl has none; the verbs follow virsh and Incus)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import click

from xenia.cli.base import Ctx, cli, out, pass_ctx
from xenia.storage.units import check_name, format_size

DEFAULT_POOL = "default"
FORMATS = ("qcow2", "raw")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Plain columns, left aligned, two spaces apart: easy to read and to `awk`."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    for row in [list(headers), *rows]:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        out("  ".join(cells).rstrip())


def _seg(kind: str, name: str, doing: str) -> str:
    # Checked here as well as in xeniad: a name with '/' or '..' would otherwise change
    # the URL and meet a bare 404 instead of the rule it broke.
    return quote(check_name(kind, name, doing), safe="")


def _vol_url(pool: str, name: str | None, doing: str) -> str:
    url = f"/v1/pools/{_seg('pool', pool, doing)}/volumes"
    return url if name is None else f"{url}/{_seg('volume', name, doing)}"


def _dump(data: Any) -> None:
    out(json.dumps(data, indent=2))


pool_option = click.option("--pool", "-p", default=DEFAULT_POOL, show_default=True,
                           metavar="POOL", help="The storage pool.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


# -- pools -------------------------------------------------------------------------------
@cli.group()
def pool() -> None:
    """Storage pools: where volumes (guest disks) live."""


@pool.command("create")
@click.argument("name")
@click.option("--type", "type_", default="dir", show_default=True,
              help="dir: a directory of qcow2/raw files; block: a block device's partitions "
                   "(or the whole device); lvm: the logical volumes of a volume group.")
@click.option("--path", type=click.Path(file_okay=False), default=None,
              help="dir: the pool's directory (default: <state dir>/pools/NAME).")
@click.option("--device", default=None, metavar="/dev/X", help="block: the device.")
@click.option("--vg", default=None, metavar="VG", help="lvm: the volume group.")
@click.option("--shared", is_flag=True,
              help="Every cluster member mounts this directory at the same path (NFS, "
              "CephFS): HA domains' disks must be on such pools.")
@pass_ctx
def pool_create(c: Ctx, name: str, type_: str, path: str | None, device: str | None,
                vg: str | None, shared: bool) -> None:
    """Create a storage pool."""
    body = {"name": name, "type": type_, "shared": shared,
            # xeniad has another working directory: send the path as the user means it.
            "path": os.path.abspath(path) if path else None,
            "device": os.path.abspath(device) if device else None, "vg": vg}
    p = c.client.post("/v1/pools", body)
    out(f"Pool '{p['name']}' created in {p['location']}")


@pool.command("list")
@json_option
@pass_ctx
def pool_list(c: Ctx, as_json: bool) -> None:
    """List storage pools."""
    pools = c.client.get("/v1/pools")
    if as_json:
        _dump(pools)
        return
    rows = []
    for p in pools:
        active = p["state"] == "active"
        rows.append([p["name"], p["type"], p["state"], str(p["volumes"]) if active else "-",
                     format_size(p["capacity"]) if active else "-",
                     format_size(p["available"]) if active else "-", p["location"]])
    table(["NAME", "TYPE", "STATE", "VOLUMES", "CAPACITY", "AVAILABLE", "PATH"], rows)
    for p in pools:
        if p.get("error"):
            click.echo(f"xenia: pool '{p['name']}': {p['error']}", err=True)


@pool.command("delete")
@click.argument("name")
@pass_ctx
def pool_delete(c: Ctx, name: str) -> None:
    """Delete an empty storage pool (its directory too, if the pool made it)."""
    seg = _seg("pool", name, f"to delete pool '{name}'")
    c.client.delete(f"/v1/pools/{seg}")
    out(f"Pool '{name}' deleted")


# -- volumes -----------------------------------------------------------------------------
@cli.group()
def volume() -> None:
    """Volumes: guest disk images in a storage pool."""


@volume.command("create")
@pool_option
@click.option("--format", "-f", "fmt", type=click.Choice(FORMATS), default=None,
              help="Image format (default: qcow2; raw in LVM pools).")
@click.option("--replica", default=None, metavar="HOST",
              help="Keep a synchronous copy on this peer or cluster member "
                   "(docs/storage.md, Replicated volumes).")
@click.argument("name")
@click.argument("size")
@pass_ctx
def volume_create(c: Ctx, pool: str, fmt: str | None, replica: str | None, name: str,
                  size: str) -> None:
    """Create an empty volume NAME of SIZE (e.g. 512M, 10G, 10GiB)."""
    doing = f"to create volume '{name}' in pool '{pool}'"
    if replica is not None:
        v = c.client.post(f"/v1/pools/{_seg('pool', pool, doing)}/replicated-volumes",
                          {"name": name, "size": size, "format": fmt, "replica": replica})
    else:
        v = c.client.post(_vol_url(pool, None, doing),
                          {"name": name, "size": size, "format": fmt})
    out(f"Volume '{v['name']}' created in pool '{v['pool']}': {v['path']} "
        f"({v['format']}, {format_size(v['virtual_size'])})")


@volume.command("list")
@pool_option
@json_option
@pass_ctx
def volume_list(c: Ctx, pool: str, as_json: bool) -> None:
    """List the volumes of a pool."""
    vols = c.client.get(_vol_url(pool, None, f"to list pool '{pool}'"))
    if as_json:
        _dump(vols)
        return
    rows = [[v["name"], v["format"], format_size(v["virtual_size"]),
             format_size(v["allocation"]), v["path"], v["backing"] or "-",
             replica_text(v.get("replica"))] for v in vols]
    table(["NAME", "FORMAT", "SIZE", "ALLOCATED", "PATH", "BACKING", "REPLICA"], rows)
    for v in vols:
        if v.get("error"):
            click.echo(f"xenia: volume '{v['name']}': {v['error']}", err=True)


@volume.command("info")
@pool_option
@click.argument("name")
@pass_ctx
def volume_info(c: Ctx, pool: str, name: str) -> None:
    """Show a volume as JSON."""
    _dump(c.client.get(_vol_url(pool, name, f"to find volume '{name}'")))


def replica_text(r: dict[str, Any] | None) -> str:
    """A volume's replication for the list: "h1 in-sync", "h1 syncing 42%", ..."""
    if not r:
        return "-"
    if r.get("role") == "replica":
        return f"copy of {r.get('primary') or '?'}"
    state = str(r.get("state"))
    if state == "syncing":
        state += f" {r.get('progress') or 0:.0f}%"
    return f"{r.get('host')} {state}"


@volume.command("resync")
@pool_option
@click.option("--replica", default=None, metavar="HOST",
              help="Make the copy on this host instead of the current replica host.")
@click.argument("name")
@pass_ctx
def volume_resync(c: Ctx, pool: str, replica: str | None, name: str) -> None:
    """Make the replica copy of volume NAME anew, while its domain runs."""
    url = _vol_url(pool, name, f"to resync volume '{name}' in pool '{pool}'")
    v = c.client.post(f"{url}/resync", {"replica": replica})
    out(f"Volume '{v['name']}': {replica_text(v.get('replica'))}")


@volume.command("path")
@pool_option
@click.argument("name")
@pass_ctx
def volume_path(c: Ctx, pool: str, name: str) -> None:
    """Print the image file of a volume (for a disk line in an xl.cfg)."""
    out(c.client.get(_vol_url(pool, name, f"to find volume '{name}'"))["path"])


@volume.command("delete")
@pool_option
@click.argument("name")
@pass_ctx
def volume_delete(c: Ctx, pool: str, name: str) -> None:
    """Delete a volume and its snapshots."""
    c.client.delete(_vol_url(pool, name, f"to delete volume '{name}' in pool '{pool}'"))
    out(f"Volume '{name}' deleted from pool '{pool}'")


@volume.command("clone")
@pool_option
@click.option("--linked", is_flag=True,
              help="A thin clone: a qcow2 overlay backed by SRC (SRC becomes a template).")
@click.argument("src")
@click.argument("new")
@pass_ctx
def volume_clone(c: Ctx, pool: str, linked: bool, src: str, new: str) -> None:
    """Make NEW a full copy of SRC, or with --linked a thin one.

    After --linked, SRC is a template: it must stay unchanged while clones of it exist,
    and Xenia refuses to attach it read-write until they are deleted.
    """
    doing = f"to clone volume '{src}' to '{new}' in pool '{pool}'"
    check_name("volume", new, doing)
    v = c.client.post(_vol_url(pool, src, doing) + "/clone", {"name": new, "linked": linked})
    how = f"a thin clone of '{v['backing']}'" if linked else f"a copy of '{src}'"
    out(f"Volume '{v['name']}' created in pool '{v['pool']}' as {how}: {v['path']}")


@volume.command("resize", context_settings={"ignore_unknown_options": True})
@pool_option
@click.option("--shrink", is_flag=True,
              help="Allow a smaller size (the data beyond it is lost).")
@click.argument("name")
@click.argument("size")
@pass_ctx
def volume_resize(c: Ctx, pool: str, shrink: bool, name: str, size: str) -> None:
    """Set the size of a volume: SIZE, +SIZE (grow by) or -SIZE (shrink by, with --shrink)."""
    v = c.client.post(_vol_url(pool, name, f"to resize volume '{name}' in pool '{pool}'")
                      + "/resize", {"size": size, "shrink": shrink})
    out(f"Volume '{v['name']}' is now {format_size(v['virtual_size'])}")


# -- snapshots ---------------------------------------------------------------------------
def _snap_url(pool: str, name: str, snap: str | None, doing: str) -> str:
    url = _vol_url(pool, name, doing) + "/snapshots"
    return url if snap is None else f"{url}/{_seg('snapshot', snap, doing)}"


@volume.command("snapshot")
@pool_option
@click.argument("name")
@click.argument("snapname")
@pass_ctx
def volume_snapshot(c: Ctx, pool: str, name: str, snapname: str) -> None:
    """Take a read-only point-in-time copy SNAPNAME of volume NAME."""
    doing = f"to snapshot volume '{name}' as '{snapname}'"
    check_name("snapshot", snapname, doing)
    s = c.client.post(_snap_url(pool, name, None, doing), {"name": snapname})
    out(f"Snapshot '{s['name']}' of volume '{name}' created: {s['path']}")


@volume.command("snapshot-list")
@pool_option
@json_option
@click.argument("name")
@pass_ctx
def volume_snapshot_list(c: Ctx, pool: str, as_json: bool, name: str) -> None:
    """List the snapshots of a volume."""
    snaps = c.client.get(_snap_url(pool, name, None, f"to list snapshots of '{name}'"))
    if as_json:
        _dump(snaps)
        return
    rows = [[s["name"], time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["created"])),
             format_size(s["virtual_size"]), format_size(s["allocation"]), s["path"]]
            for s in snaps]
    table(["NAME", "CREATED", "SIZE", "ALLOCATED", "PATH"], rows)


@volume.command("snapshot-delete")
@pool_option
@click.argument("name")
@click.argument("snapname")
@pass_ctx
def volume_snapshot_delete(c: Ctx, pool: str, name: str, snapname: str) -> None:
    """Delete snapshot SNAPNAME of volume NAME."""
    c.client.delete(_snap_url(pool, name, snapname, f"to delete snapshot '{snapname}'"))
    out(f"Snapshot '{snapname}' of volume '{name}' deleted")


@volume.command("snapshot-restore")
@pool_option
@click.argument("name")
@click.argument("snapname")
@pass_ctx
def volume_snapshot_restore(c: Ctx, pool: str, name: str, snapname: str) -> None:
    """Put the content of snapshot SNAPNAME back into volume NAME (the snapshot stays)."""
    c.client.post(_snap_url(pool, name, snapname, f"to restore '{name}' from '{snapname}'")
                  + "/restore")
    out(f"Volume '{name}' restored from snapshot '{snapname}'")
