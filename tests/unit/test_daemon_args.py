"""xeniad's own options: bad values are refused before anything starts."""

from __future__ import annotations

import pytest

from xenia import daemon


@pytest.mark.parametrize("value", ["0", "-5", "3601", "soon"])
def test_migration_stall_timeout_out_of_range_is_refused(
        value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        daemon.main(["--root", "/nonexistent/xenia-root", "--migration-stall-timeout", value])
    assert e.value.code == 2
    assert "--migration-stall-timeout" in capsys.readouterr().err


def test_boot_watchdog_below_zero_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        daemon.main(["--root", "/nonexistent/xenia-root", "--boot-watchdog", "-1"])
    assert e.value.code == 2
    assert "--boot-watchdog" in capsys.readouterr().err
