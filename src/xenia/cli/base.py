"""The `xenia` command group and what every subcommand module shares (Ctx, output)."""

from __future__ import annotations

import importlib

import click

import xenia
from xenia.cli.client import Client
from xenia.paths import Paths


class Ctx:
    def __init__(self, autostart: bool, dry_run: bool = False) -> None:
        self.paths = Paths.from_env()
        self.autostart = autostart
        self.dry_run = dry_run
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.paths, autostart=self.autostart, dry_run=self.dry_run)
        return self._client


pass_ctx = click.make_pass_decorator(Ctx)


def out(text: str = "") -> None:
    click.echo(text)


def warn(text: str) -> None:
    click.echo(f"xenia: {text}", err=True)


# Which module defines which subcommand. Modules are imported only when their command
# runs: every CLI call pays its import time, and that is part of `xenia create`'s
# overhead over bare QEMU (docs/decisions.md, "CLI start-up").
COMMAND_MODULES: dict[str, str] = {}


def register(module: str, *names: str) -> None:
    for name in names:
        COMMAND_MODULES[name] = module


class LazyGroup(click.Group):
    @staticmethod
    def resolve_abbreviation(name: str) -> str:
        """xl's abbreviations: a name that starts exactly one command is that command
        (`xenia li` is list); `v` is vcpu-list, as in xl. An exact name always wins."""
        if name in COMMAND_MODULES:
            return name
        if name == "v":
            return "vcpu-list"
        matches = sorted(n for n in COMMAND_MODULES if n.startswith(name))
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise click.UsageError(f"'{name}' is ambiguous: {', '.join(matches)}")
        return name

    def _load(self, module: str) -> None:
        importlib.import_module(f"xenia.cli.{module}")

    def list_commands(self, ctx: click.Context) -> list[str]:
        for module in sorted(set(COMMAND_MODULES.values())):
            self._load(module)
        return sorted(self.commands)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd_name = self.resolve_abbreviation(cmd_name)
        if cmd_name not in self.commands:
            module = COMMAND_MODULES.get(cmd_name)
            if module is None:
                self.list_commands(ctx)
            else:
                self._load(module)
        return self.commands.get(cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(xenia.__version__, prog_name="xenia")
@click.option("--no-autostart", is_flag=True,
              help="Do not start xeniad when none answers (also: XENIA_NO_AUTOSTART=1).")
@click.option("-N", "dry_run", is_flag=True,
              help="Dry run (xl -N): print what would change, change nothing.")
@click.pass_context
def cli(ctx: click.Context, no_autostart: bool, dry_run: bool) -> None:
    """Xenia: xl's commands for KVM/QEMU guests and containers."""
    ctx.obj = Ctx(autostart=not no_autostart, dry_run=dry_run)


