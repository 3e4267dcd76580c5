"""save, restore, migrate."""

from __future__ import annotations

import os

import click

from xenia.cli.base import Ctx, cli, out, pass_ctx
from xenia.errors import InvalidConfig


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
