"""xl's remaining verbs: dmesg, trigger, sysrq, button-press, qemu-monitor-command."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import click

from xenia.cli.base import Ctx, cli, out, pass_ctx
from xenia.config.model import DomainConfig
from xenia.errors import NotFound, NotSupported
from xenia.qemu.platform import channel_path, channels

TRIGGERS = ("nmi", "reset", "init", "power", "sleep", "s3resume")


@cli.command()
@click.option("-c", "--clear", is_flag=True, help="Clear xeniad's log buffer after reading.")
@pass_ctx
def dmesg(c: Ctx, clear: bool) -> None:
    """Show xeniad's recent log and each domain's QEMU log (xl: Xen's message buffer)."""
    for line in c.client.get(f"/v1/host/dmesg?clear={'true' if clear else 'false'}")["lines"]:
        out(line)


@cli.command()
@click.argument("dom")
@click.argument("kind", type=click.Choice(TRIGGERS))
@click.argument("vcpu", type=int, required=False)
@pass_ctx
def trigger(c: Ctx, dom: str, kind: str, vcpu: int | None) -> None:
    """Send a trigger to a domain (nmi, reset, power, s3resume; init and sleep are
    refused: QEMU has neither). VCPU is accepted; an NMI goes to every vCPU."""
    c.client.post(f"/v1/domains/{dom}/trigger", {"kind": kind})


@cli.command()
@click.argument("dom")
@click.argument("letter")
@pass_ctx
def sysrq(c: Ctx, dom: str, letter: str) -> None:
    """Send Alt+SysRq+LETTER to the guest's keyboard."""
    c.client.post(f"/v1/domains/{dom}/sysrq", {"key": letter})


@cli.command("button-press")
@click.argument("dom")
@click.argument("button", type=click.Choice(["power", "sleep"]))
@pass_ctx
def button_press(c: Ctx, dom: str, button: str) -> None:
    """Press a domain's ACPI power button (sleep: QEMU has no sleep button)."""
    c.client.post(f"/v1/domains/{dom}/button", {"button": button})


@cli.command("qemu-monitor-command")
@click.argument("dom")
@click.argument("command")
@pass_ctx
def qemu_monitor_command(c: Ctx, dom: str, command: str) -> None:
    """Run a QEMU human monitor command in the domain's QEMU (admin only over TCP)."""
    text = c.client.post(f"/v1/domains/{dom}/monitor", {"command": command})["output"]
    if text:
        click.echo(text, nl=not text.endswith("\n"))


@cli.command("dump-core")
@click.argument("dom")
@click.argument("filename", required=False)
@pass_ctx
def dump_core(c: Ctx, dom: str, filename: str | None) -> None:
    """Write the guest's memory as an ELF core file (crash(8) reads it)."""
    file = os.path.abspath(filename) if filename else None
    out(c.client.post(f"/v1/domains/{dom}/dump-core", {"file": file})["file"])


@cli.command()
@click.argument("dom")
@pass_ctx
def vncviewer(c: Ctx, dom: str) -> None:
    """Run a VNC viewer on the domain's display (needs a vncviewer on PATH)."""
    d = c.client.get(f"/v1/domains/{dom}")
    address = d.get("runtime", {}).get("vnc")
    if not address:
        raise NotFound(f"Failed to find the VNC display of '{dom}': it has none (set vnc=1 "
                       "in an hvm domain's config)")
    viewer = shutil.which("vncviewer")
    if viewer is None:
        raise NotSupported(f"Failed to start a VNC viewer: none on PATH; connect one to "
                           f"{address} (apt-get install tigervnc-viewer)")
    host, _, port = address.rpartition(":")
    os.execv(viewer, [viewer, f"{host}::{port}"])


@cli.command("channel-list")
@click.argument("dom")
@pass_ctx
def channel_list(c: Ctx, dom: str) -> None:
    """List a domain's virtio-serial channels and where the host end listens."""
    d = c.client.get(f"/v1/domains/{dom}")
    cfg = DomainConfig.from_dict(d["config"])
    # The run directory is the console socket's; a stopped domain has none.
    run_dir = Path(d["console"]).parent if d.get("console") else Path("-")
    out("Idx Name                             Connection Path")
    for i, spec in enumerate(channels(cfg)):
        path = channel_path(run_dir, i, spec)
        out(f"{i:<3} {spec.name:<32} {spec.connection:<10} {path}")


@cli.command("config-update")
@click.argument("dom")
@click.argument("filename")
@click.argument("overrides", nargs=-1)
@pass_ctx
def config_update(c: Ctx, dom: str, filename: str, overrides: tuple[str, ...]) -> None:
    """Give a domain a new config, used from its next reboot on (devices keep their own
    verbs: a config that changes disks, vifs or pci is refused)."""
    from xenia.cli.domains import load_cfg

    cfg = load_cfg(filename, overrides)
    c.client.post(f"/v1/domains/{dom}/config", {"config": cfg.to_dict()})
