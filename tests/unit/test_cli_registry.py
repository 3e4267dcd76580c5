"""The lazy CLI must know every command, and each must live where the registry says."""

from __future__ import annotations

from click.testing import CliRunner

from xenia.cli.base import COMMAND_MODULES, cli
from xenia.cli.main import main  # noqa: F401 - fills the registry


def test_every_registered_command_loads() -> None:
    for name, module in COMMAND_MODULES.items():
        cmd = cli.get_command(None, name)  # type: ignore[arg-type]
        assert cmd is not None, name
        assert cmd.callback is not None
        assert cmd.callback.__module__ == f"xenia.cli.{module}"


def test_every_defined_command_is_registered() -> None:
    cli.list_commands(None)  # type: ignore[arg-type]
    assert set(cli.commands) == set(COMMAND_MODULES)


def test_help_lists_xl_commands() -> None:
    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0
    for name in ("create", "list", "console", "shutdown", "destroy", "pool", "network"):
        assert name in res.output
