"""xl's remaining verbs: dmesg, trigger, sysrq, button-press, qemu-monitor-command."""

from __future__ import annotations

import click

from xenia.cli.base import Ctx, cli, out, pass_ctx

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
