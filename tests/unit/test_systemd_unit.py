"""packaging/xeniad.service: valid for systemd (systemd-analyze verify) and hardened
(systemd-analyze security's exposure, offline: 9.6 "UNSAFE" for the unit before)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "xeniad.service"
pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze comes with systemd")


def copy(tmp_path: Path) -> Path:
    # verify checks that ExecStart's program exists: a test host has no installed xeniad.
    unit = tmp_path / "xeniad.service"
    unit.write_text(UNIT.read_text().replace("ExecStart=/usr/local/bin/xeniad",
                                             "ExecStart=/bin/true"))
    return unit


def test_unit_verifies(tmp_path: Path) -> None:
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy(tmp_path))],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr


def test_unit_is_hardened(tmp_path: Path) -> None:
    res = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                          str(copy(tmp_path))], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout)
    assert m, res.stdout + res.stderr
    assert float(m.group(1)) <= 7.8, res.stdout
    passed = {line.split()[1].split("=")[0] for line in res.stdout.splitlines()
              if line.startswith("✓")}
    assert {"NoNewPrivileges", "PrivateTmp", "ProtectKernelModules", "ProtectKernelLogs",
            "LockPersonality", "SystemCallArchitectures", "RestrictRealtime",
            "ProtectHostname"} <= passed, passed
