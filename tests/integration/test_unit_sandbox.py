"""The systemd unit's hardening leaves guests working. This machine runs no systemd
(`systemctl is-system-running` says offline), so the unit's file-system, privilege and
capability directives are applied by hand (unit_sandbox.py reads them from
packaging/xeniad.service): a tiny guest boots under them, and xeniad and its QEMU are
seen to run with no-new-privs, without CAP_SYS_MODULE, and with /etc and /usr read-only.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Host, Image, qemu_pids_with
from tests.integration.unit_sandbox import directives

pytestmark = pytest.mark.integration

HELPER = Path(__file__).with_name("unit_sandbox.py")
CAP_SYS_MODULE = 16


class SandboxedHost(Host):
    def daemon_argv(self, *args: str) -> list[str]:
        return ["unshare", "--mount", "--propagation", "slave", sys.executable, str(HELPER),
                "--", *super().daemon_argv(*args)]


@pytest.fixture
def sandboxed(tiny_image: Image) -> Iterator[Host]:
    h = SandboxedHost(tiny_image)
    try:
        h.start_daemon()
        yield h
    finally:
        h.cleanup()


def status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def read_only_mounts(pid: int) -> set[str]:
    ro = set()
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if "ro" in fields[5].split(","):
            ro.add(fields[4])
    return ro


def test_the_unit_names_the_directives_emulated_here() -> None:
    d = directives()
    assert d["ProtectSystem"] == "full" and d["NoNewPrivileges"] == "yes"
    assert d["ProtectHome"] == "read-only" and d["ProtectKernelModules"] == "yes"
    assert d["CapabilityBoundingSet"].startswith("~CAP_SYS_MODULE ")


def test_a_guest_boots_under_the_units_hardening(sandboxed: Host) -> None:
    assert sandboxed.daemon is not None
    sandboxed.create("hard")
    assert sandboxed.domain("hard")["state"] in ("running", "blocked")
    pids = [sandboxed.daemon.pid, *qemu_pids_with(str(sandboxed.root))]
    assert len(pids) == 2
    for pid in pids:
        st = status(pid)
        assert st["NoNewPrivs"] == "1", pid
        assert not int(st["CapBnd"], 16) & (1 << CAP_SYS_MODULE), pid
        assert {"/etc", "/usr"} <= read_only_mounts(pid), pid
    sandboxed.xenia("destroy", "hard")
    assert qemu_pids_with(str(sandboxed.root)) == []
