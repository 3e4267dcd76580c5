"""save, restore, migrate."""

from __future__ import annotations

import os

import click

from xenia.cli.base import Ctx, cli, out, pass_ctx
from xenia.errors import InvalidConfig, XeniaError


@cli.command()
@click.option("-c", "keep", is_flag=True, help="Leave the domain running after saving.")
@click.option("-p", "paused", is_flag=True, help="Leave the domain paused after saving.")
@click.argument("dom")
@click.argument("file")
@click.argument("config", required=False)
@pass_ctx
def save(c: Ctx, keep: bool, paused: bool, dom: str, file: str, config: str | None) -> None:
    """Save a domain's state to FILE (then destroy it, unless -c or -p)."""
    if config is not None:
        raise InvalidConfig("Failed to save: a replacement config file is not supported; the "
                            "save file always carries the domain's own config")
    res = c.client.post(f"/v1/domains/{dom}/save",
                        {"file": os.path.abspath(file), "keep": keep, "paused": paused},
                        timeout=None)
    out(f"Saved {dom} to {res['file']} ({res['bytes'] / 2**20:.1f} MiB in "
        f"{res['seconds']:.2f} s)")


@cli.command()
@click.option("-p", "paused", is_flag=True, help="Leave the domain paused after restoring.")
@click.option("-e", "no_wait", is_flag=True, help="Accepted for xl compatibility.")
@click.option("-d", "debug", is_flag=True, hidden=True)
@click.option("-V", "--vncviewer", is_flag=True, hidden=True)
@click.option("--name", help="Xenia: restore under another name.")
@click.argument("files", nargs=-1, required=True)
@pass_ctx
def restore(c: Ctx, paused: bool, no_wait: bool, debug: bool, vncviewer: bool,
            name: str | None, files: tuple[str, ...]) -> None:
    """Restore a domain from a save file ([CONFIG] FILE, as xl)."""
    if len(files) > 2:
        raise InvalidConfig("Failed to restore: give [CONFIG] FILE")
    if len(files) == 2:
        raise InvalidConfig("Failed to restore: a replacement config file is not supported; "
                            "the save file carries the domain's config")
    d = c.client.post("/v1/restore", {"file": os.path.abspath(files[-1]), "paused": paused,
                                      "name": name}, timeout=None)
    out(f"Restored {d['name']} (domid {d['domid']})")


def _render(job: dict[str, object]) -> str:
    p = job.get("progress") or {}
    assert isinstance(p, dict)
    mib = 2**20
    if job["status"] in ("checking", "preparing"):
        return f"{job['status']}..."
    if job["status"] == "mirroring":
        return "copying disks (live mirror)..."
    total = int(p.get("total") or 0)
    done = total - int(p.get("remaining") or 0)
    pct = 100 * done / total if total else 0.0
    rate = int(p.get("dirty_rate") or 0) * 4096 / mib
    throttle = int(p.get("throttle") or 0)
    extra = f", throttle {throttle}%" if throttle else ""
    return (f"{job['status']}: pass {p.get('passes', 0)}, {pct:5.1f}% of RAM, "
            f"{int(p.get('transferred') or 0) / mib:.0f} MiB sent, "
            f"{int(p.get('remaining') or 0) / mib:.0f} MiB left, dirtying {rate:.1f} MiB/s"
            f"{extra}")


@cli.command()
@click.option("--copy-storage", is_flag=True, help="Mirror the disks to the host (no shared "
              "storage).")
@click.option("--downtime", "downtime", type=int, metavar="MS",
              help="Maximum downtime at the switch-over (default 30 ms).")
@click.option("--bandwidth", "bandwidth", type=int, metavar="MIBS",
              help="Bandwidth limit in MiB/s.")
@click.option("--postcopy", is_flag=True, help="Switch to post-copy if pre-copy is slow.")
@click.option("--auto-converge", is_flag=True, help="Throttle a guest that dirties memory "
              "faster than the link carries it; without --downtime, the downtime limit is "
              "then raised step by step (up to 1000 ms) once the throttle is at 99%.")
@click.option("--no-tls", is_flag=True, help="Send the migration stream unencrypted.")
@click.option("--cancel", "cancel", is_flag=True, help="Cancel the migration of DOM.")
@click.option("-l", "live_flag", is_flag=True, hidden=True)  # xl: migrations are live anyway
@click.argument("dom")
@click.argument("host", required=False)
@pass_ctx
def migrate(c: Ctx, copy_storage: bool, downtime: int | None, bandwidth: int | None,
            postcopy: bool, auto_converge: bool, no_tls: bool, cancel: bool,
            live_flag: bool, dom: str, host: str | None) -> None:
    """Live-migrate DOM to HOST (a peer added with `xenia host add`)."""
    import sys
    import time

    if cancel:
        job = c.client.post(f"/v1/domains/{dom}/migrate/cancel", timeout=120)
        out(f"Cancelled the migration of {dom}; it keeps running here")
        return
    if not host:
        raise InvalidConfig("Failed to migrate: name the destination host (xenia host list)")
    job = c.client.post(f"/v1/domains/{dom}/migrate", {
        "host": host, "copy_storage": copy_storage, "downtime_ms": downtime,
        "bandwidth_mibs": bandwidth, "postcopy": postcopy, "auto_converge": auto_converge,
        "tls": not no_tls})
    tty = sys.stderr.isatty()
    last = ""
    try:
        while job["finished"] is None:
            time.sleep(0.2)
            job = c.client.get(f"/v1/migrations/{job['id']}")
            line = _render(job)
            if line != last:
                if tty:
                    sys.stderr.write("\r\033[K" + line)
                else:
                    sys.stderr.write(line + "\n")
                sys.stderr.flush()
                last = line
    except KeyboardInterrupt:
        sys.stderr.write("\ncancelling...\n")
        job = c.client.post(f"/v1/migrations/{job['id']}/cancel", timeout=120)
        raise XeniaError(str(job.get("message") or "Migration cancelled")) from None
    finally:
        if tty:
            sys.stderr.write("\n")
    if job["status"] != "completed":
        raise XeniaError(str(job["message"]))
    out(job["message"])
