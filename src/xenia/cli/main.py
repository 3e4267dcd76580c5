"""The `xenia` command: xl's subcommands and flags, talking to xeniad.

Handlers stay thin: parse arguments, call the API, print. Every XeniaError becomes one
line on stderr and a non-zero exit; never a traceback. Each area's commands live in a
module of their own and register on the group from cli/base.py.
"""

from __future__ import annotations

import sys

import click

from xenia.cli.base import cli, register
from xenia.cli.client import DryRun
from xenia.errors import XeniaError

register("domains", "create", "list", "uptime", "domid", "domname", "info", "shutdown",
         "reboot", "destroy", "pause", "unpause", "rename", "console", "start")
register("devices", "block-attach", "block-detach", "block-list", "cd-insert", "cd-eject",
         "network-attach", "network-detach", "network-list", "pci-list", "mem-set", "mem-max",
         "vcpu-set", "vcpu-list", "vcpu-pin", "sched-credit", "pci-assignable-add",
         "pci-assignable-list", "pci-assignable-remove", "pci-attach", "pci-detach",
         "screenshot")
register("migrate", "save", "restore", "migrate")
register("images", "image")
register("storage", "pool", "volume")
register("snapshots", "snapshot-create", "snapshot-list", "snapshot-revert", "snapshot-delete")
register("network", "network")
register("top", "top")
register("hosts", "host")
register("xl", "dmesg", "trigger", "sysrq", "button-press", "qemu-monitor-command",
         "dump-core", "vncviewer", "channel-list", "config-update")
register("xl", "cpupool-list", "cpupool-create", "cpupool-destroy", "cpupool-rename",
         "cpupool-cpu-add", "cpupool-cpu-remove", "cpupool-migrate", "cpupool-numa-split",
         "vtpm-list", "vtpm-attach", "vtpm-detach", "sched-credit2")
register("xlshim", "xl-command")
register("usb", "usbctrl-attach", "usbctrl-detach", "usbdev-attach", "usbdev-detach",
         "usb-list", "suspend", "resume")
register("ha", "ha")
register("cluster", "cluster")


def main() -> None:
    try:
        cli(standalone_mode=False)
    except XeniaError as e:
        click.echo(f"xenia: {e.message}", err=True)
        sys.exit(1)
    except DryRun:
        sys.exit(0)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
