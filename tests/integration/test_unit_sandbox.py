"""The systemd unit's hardening leaves guests and containers working. This machine runs no
systemd (`systemctl is-system-running` says offline), so the unit's directives are applied
by hand (unit_sandbox.py reads them from packaging/xeniad.service): file system,
PrivateTmp=, privileges, capabilities and the seccomp-based ones. A tiny guest boots and a
container starts under them; xeniad, its QEMU and the container are seen to run with
no-new-privs, the unit's seccomp filter (under their own), without CAP_SYS_MODULE, with
/etc and /usr read-only and /tmp and /var/tmp private.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import test_containers as containers
from tests.integration.harness import Host, Image, qemu_pids_with
from tests.integration.unit_sandbox import directives

pytestmark = pytest.mark.integration
rootfs_image = containers.rootfs_image  # the busybox rootfs fixture

HELPER = Path(__file__).with_name("unit_sandbox.py")
CAP_SYS_MODULE = 16
SANDBOX = ["unshare", "--mount", "--propagation", "slave", sys.executable, str(HELPER), "--"]


class SandboxedHost(Host):
    """A Host whose xeniad runs under the unit. PrivateTmp= hides the host's /tmp and
    /var/tmp from it (as systemd's does), so its root, and the kernel, initrd and rootfs
    its domains use, are copied under /var/lib."""

    def __init__(self, image: Image) -> None:
        root = Path(tempfile.mkdtemp(prefix="xu-", dir="/var/lib"))
        files = root / "image"
        files.mkdir()
        own = Image(kernel=files / "kernel", initrd=files / "initrd")
        shutil.copyfile(image.kernel, own.kernel)
        shutil.copyfile(image.initrd, own.initrd)
        super().__init__(own, root)

    def daemon_argv(self, *args: str) -> list[str]:
        return [*SANDBOX, *super().daemon_argv(*args)]


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


def mounts(pid: int) -> dict[str, str]:
    """Mount point -> filesystem type, in the mount namespace of `pid`."""
    out = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        out[fields[4]] = fields[fields.index("-") + 1]
    return out


def test_the_unit_names_the_directives_emulated_here() -> None:
    d = directives()
    assert d["ProtectSystem"] == "full" and d["NoNewPrivileges"] == "yes"
    assert d["ProtectHome"] == "read-only" and d["ProtectKernelModules"] == "yes"
    assert d["CapabilityBoundingSet"].startswith("~CAP_SYS_MODULE ")
    assert d["PrivateTmp"] == "yes" and d["SystemCallArchitectures"] == "native"
    assert d["LockPersonality"] == "yes" and d["RestrictRealtime"] == "yes"
    assert d["RestrictAddressFamilies"].split() == [
        "AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"]


# What the emulation must refuse, each next to something it must allow; run with and
# without it, so a refusal is the sandbox's and not this host's.
PROBE = """
import ctypes, errno, os, socket
libc = ctypes.CDLL(None, use_errno=True)
def err(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
def personality(value):
    if libc.personality(value) < 0:
        raise OSError(ctypes.get_errno(), "personality")
print(err(lambda: socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()),
      err(lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()),
      err(lambda: personality(0x8)),
      err(lambda: os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))),
      err(lambda: os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))),
      os.path.exists(os.environ["MARK"]))
"""


def test_the_emulation_applies_the_seccomp_directives_and_private_tmp() -> None:
    with tempfile.NamedTemporaryFile(dir="/tmp") as mark:
        env = dict(os.environ, MARK=mark.name)
        argv = ["/usr/bin/python3", "-c", PROBE]
        outside = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
        inside = subprocess.run([*SANDBOX, *argv], capture_output=True, text=True, env=env,
                                check=True)
    assert outside.stdout.split() == ["ok", "ok", "ok", "ok", "ok", "True"]
    assert inside.stdout.split() == ["EAFNOSUPPORT", "ok", "EPERM", "EPERM", "ok", "False"]


def test_a_guest_and_a_container_run_under_the_units_hardening(
        sandboxed: Host, rootfs_image: Path) -> None:
    assert sandboxed.daemon is not None
    sandboxed.create("hard")
    assert sandboxed.domain("hard")["state"] in ("running", "blocked")
    # A container too: crun, its user namespace, overlay and seccomp profile under the
    # unit's filter and bounding set (its rootfs copied where PrivateTmp= cannot hide it).
    rootfs = sandboxed.root / "rootfs"
    subprocess.run(["cp", "-a", "--", str(rootfs_image), str(rootfs)], check=True)
    ct = containers.Containers(sandboxed, rootfs)
    try:
        dom = ct.create("ct")
        assert sandboxed.run("ct", "echo hello-$((6*7))").strip() == "hello-42"
        daemon = sandboxed.daemon.pid
        qemus = qemu_pids_with(str(sandboxed.root))
        assert len(qemus) == 1
        init = dom["runtime"]["pid"]
        for pid in (daemon, *qemus, init):
            st = status(pid)
            assert st["NoNewPrivs"] == "1", pid
            assert st["Seccomp"] == "2", pid
        # The unit's filter is xeniad's only one; QEMU (-sandbox) and the container (its
        # profile) stack their own on it.
        assert status(daemon)["Seccomp_filters"] == "1"
        assert int(status(qemus[0])["Seccomp_filters"]) >= 2
        assert int(status(init)["Seccomp_filters"]) >= 2
        for pid in (daemon, *qemus):
            assert not int(status(pid)["CapBnd"], 16) & (1 << CAP_SYS_MODULE), pid
            assert {"/etc", "/usr"} <= read_only_mounts(pid), pid
            seen = mounts(pid)
            assert seen.get("/tmp") == "tmpfs" and seen.get("/var/tmp") == "tmpfs", pid
        sandboxed.xenia("destroy", "ct")
        assert ct.leftovers(dom) == []
        sandboxed.xenia("destroy", "hard")
        assert qemu_pids_with(str(sandboxed.root)) == []
    finally:
        ct.cleanup()  # what a failure left: monitors, cgroups (it destroys every domain)
