"""packaging/xeniad.service: valid for systemd (systemd-analyze verify) and hardened
(systemd-analyze security's exposure, offline: 9.6 "UNSAFE" for the unit before), and
docs/security.md's account of it complete (every capability kept has its reason)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "xeniad.service"
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze comes with systemd")


def copy(tmp_path: Path) -> Path:
    # verify checks that ExecStart's program exists: a test host has no installed xeniad.
    unit = tmp_path / "xeniad.service"
    unit.write_text(UNIT.read_text().replace("ExecStart=/usr/local/bin/xeniad",
                                             "ExecStart=/bin/true"))
    return unit


@needs_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy(tmp_path))],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr


@needs_analyze
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


# Linux's capabilities, 0..40 (linux/capability.h).
CAPABILITIES = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP "
    "LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER "
    "SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE "
    "SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP "
    "MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF "
    "CHECKPOINT_RESTORE").split()


def unit_section() -> str:
    text = (UNIT.parents[1] / "docs" / "security.md").read_text()
    start = text.index("### The systemd unit")
    return text[start:text.index("\n### ", start + 1)]


def test_docs_give_a_reason_for_every_capability_kept() -> None:
    assert len(CAPABILITIES) == 41
    line = [ln for ln in UNIT.read_text().splitlines()
            if ln.startswith("CapabilityBoundingSet=~")][0]
    dropped = {c.removeprefix("CAP_") for c in line.split("~", 1)[1].split()}
    assert dropped < set(CAPABILITIES)
    section = unit_section()
    table = section[section.index("| capability | needed for |"):]
    table = table[:table.index("\n\n")]
    documented = set()
    for row in table.splitlines()[2:]:
        documented |= {c.strip() for c in row.split("|")[1].split(",")}
    assert documented == set(CAPABILITIES) - dropped
    # The directives left out include PrivateMounts=, and the section says what code
    # inside xeniad can undo.
    assert "| `PrivateMounts=` |" in section
    assert "What the unit does not stop" in section and "CAP_SYS_ADMIN" in section


def test_the_unit_does_not_claim_containers_lack_its_dropped_capabilities() -> None:
    text = UNIT.read_text()
    assert "cannot be given them" not in text
    assert "full\n# bounding set" in text or "full bounding set" in text.replace("\n# ", " ")
