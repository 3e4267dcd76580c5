"""`xenia ha DOM on|off` (Xenia's own: xl has no HA) and `xenia ha status`.

An HA domain is restarted on another cluster member when its host dies (docs/cluster.md,
"High availability"); its disks must all be on shared pools.
"""

from __future__ import annotations

import json

import click

from xenia.cli.base import Ctx, cli, out, pass_ctx


@cli.command("ha")
@click.argument("dom")
@click.argument("state", required=False, type=click.Choice(["on", "off"]))
@pass_ctx
def ha_cmd(c: Ctx, dom: str, state: str | None) -> None:
    """Turn high availability of domain DOM on or off; `xenia ha status`: this member's
    lease, fencing and (on the leader) the failover decisions."""
    if dom == "status" and state is None:
        out(json.dumps(c.client.get("/v1/ha"), indent=2))
        return
    if state is None:
        raise click.UsageError("say `on` or `off` (or `xenia ha status`)")
    d = c.client.post(f"/v1/domains/{dom}/ha", {"on": state == "on"})
    out(f"Domain '{d['name']}': HA {'on' if d['ha'] else 'off'}")
