"""xl's USB commands (usbctrl-attach/-detach, usbdev-attach/-detach, usb-list) and
suspend/resume."""

from __future__ import annotations

import click

from xenia.cli.base import Ctx, cli, out, pass_ctx


@cli.command("usbctrl-attach")
@click.argument("dom")
@click.argument("options", nargs=-1)
@pass_ctx
def usbctrl_attach(c: Ctx, dom: str, options: tuple[str, ...]) -> None:
    """Hot-plug a USB controller: version=1|2|3 (UHCI, EHCI, xHCI; default 3), ports=N."""
    res = c.client.post(f"/v1/domains/{dom}/usbctrl", {"spec": ",".join(options)})
    if res:
        out(f"devid {res['devid']}")


@cli.command("usbctrl-detach")
@click.argument("dom")
@click.argument("devid", type=int)
@pass_ctx
def usbctrl_detach(c: Ctx, dom: str, devid: int) -> None:
    """Hot-unplug a USB controller and the devices on it."""
    c.client.delete(f"/v1/domains/{dom}/usbctrl/{devid}")


@cli.command("usbdev-attach")
@click.argument("dom")
@click.argument("options", nargs=-1, required=True)
@pass_ctx
def usbdev_attach(c: Ctx, dom: str, options: tuple[str, ...]) -> None:
    """Plug a USB device in: hostbus=B hostaddr=A (a host device, see lsusb),
    type=tablet|mouse|keyboard, or type=storage,path=IMAGE (a USB stick); controller=C
    port=P to choose the port."""
    res = c.client.post(f"/v1/domains/{dom}/usbdev", {"spec": ",".join(options)})
    if res:
        out(f"controller {res['controller']} port {res['port']}")


@cli.command("usbdev-detach")
@click.argument("dom")
@click.argument("controller", type=int)
@click.argument("port", type=int)
@pass_ctx
def usbdev_detach(c: Ctx, dom: str, controller: int, port: int) -> None:
    """Unplug the USB device on CONTROLLER's PORT."""
    c.client.delete(f"/v1/domains/{dom}/usbdev/{controller}/{port}")


@cli.command("usb-list")
@click.argument("dom")
@pass_ctx
def usb_list(c: Ctx, dom: str) -> None:
    """List a domain's USB controllers and the devices on their ports."""
    out("Devid  Type         Version Ports")
    for ctrl in c.client.get(f"/v1/domains/{dom}/usb"):
        out(f"{ctrl['devid']:<6} {'devicemodel':<12} {ctrl['version']:<7} {ctrl['ports']}")
        for d in ctrl["devices"]:
            where = (f"{d['hostbus']}:{d['hostaddr']}" if d["type"] == "hostdev" else "-")
            out(f"  Port {d['port']}: {d['type']} {where} {d['seen'] or '(not seen)'}")


@cli.command()
@click.argument("dom")
@pass_ctx
def suspend(c: Ctx, dom: str) -> None:
    """Suspend a domain to RAM (S3): its guest agent is asked, as xl asks the guest."""
    c.client.post(f"/v1/domains/{dom}/suspend", {})


@cli.command()
@click.argument("dom")
@pass_ctx
def resume(c: Ctx, dom: str) -> None:
    """Wake a domain suspended to RAM (S3)."""
    c.client.post(f"/v1/domains/{dom}/resume", {})
