"""`xenia xl-command install|remove`: an `xl` command (a symlink to `xenia`) so scripts
written for xl run unchanged. Only on request, and never on a real Xen host or over
another `xl`: a Xen admin's xl must keep working."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

from xenia.cli.base import cli, out
from xenia.errors import AlreadyExists, InvalidConfig, NotFound

DEFAULT = Path("/usr/local/bin/xl")


def on_xen(proc_xen: Path = Path("/proc/xen"),
           hypervisor: Path = Path("/sys/hypervisor/type")) -> bool:
    """True on a Xen host (dom0 or a Xen guest): there `xl` means Xen's."""
    try:
        return proc_xen.exists() or hypervisor.read_text().strip() == "xen"
    except OSError:
        return False


def xenia_executable() -> Path:
    found = shutil.which("xenia") or sys.argv[0]
    return Path(os.path.abspath(found))


def install(target: Path, xenia: Path, xen: bool) -> None:
    if xen:
        raise InvalidConfig("Failed to install the xl command: this is a Xen host, where xl "
                            "is Xen's own")
    if target.is_symlink() and Path(os.readlink(target)) == xenia:
        return  # already ours
    if target.exists() or target.is_symlink():
        raise AlreadyExists(f"Failed to install the xl command: {target} exists and is not "
                            "Xenia's; it is left alone")
    other = shutil.which("xl")
    if other is not None and Path(other) != target:
        raise AlreadyExists(f"Failed to install the xl command: another xl is on PATH "
                            f"({other}); it is left alone")
    target.symlink_to(xenia)


def remove(target: Path, xenia: Path) -> None:
    if not target.is_symlink() or Path(os.readlink(target)) != xenia:
        raise NotFound(f"Failed to remove the xl command: {target} is not Xenia's xl")
    target.unlink()


@cli.command("xl-command")
@click.argument("action", type=click.Choice(["install", "remove"]))
@click.option("--path", "target", type=click.Path(path_type=Path), default=DEFAULT,
              show_default=True, help="Where the xl command goes.")
def xl_command(action: str, target: Path) -> None:
    """Install (or remove) an `xl` command that runs xenia, for scripts written for xl."""
    if action == "install":
        install(target, xenia_executable(), on_xen())
        out(f"{target} -> {xenia_executable()}")
    else:
        remove(target, xenia_executable())
