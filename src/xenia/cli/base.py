"""The `xenia` command group and what every subcommand module shares (Ctx, output)."""

from __future__ import annotations

import click

import xenia
from xenia.cli.client import Client
from xenia.paths import Paths


class Ctx:
    def __init__(self, autostart: bool) -> None:
        self.paths = Paths.from_env()
        self.autostart = autostart
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.paths, autostart=self.autostart)
        return self._client


pass_ctx = click.make_pass_decorator(Ctx)


def out(text: str = "") -> None:
    click.echo(text)


def warn(text: str) -> None:
    click.echo(f"xenia: {text}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(xenia.__version__, prog_name="xenia")
@click.option("--no-autostart", is_flag=True,
              help="Do not start xeniad when none answers (also: XENIA_NO_AUTOSTART=1).")
@click.pass_context
def cli(ctx: click.Context, no_autostart: bool) -> None:
    """Xenia: xl's commands for KVM/QEMU guests and containers."""
    ctx.obj = Ctx(autostart=not no_autostart)


