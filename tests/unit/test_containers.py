"""Container domains without a runtime: the OCI spec, rootfs/init checks, CPU choice, the
cpuset group (fake v1 and v2 trees), exit classification, and the monitor's console relay
on a real pty."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from xenia.config.build import build_config
from xenia.config.model import DomainConfig
from xenia.containers import spec
from xenia.containers.idmap import IdMap
from xenia.drivers.container_instance import classify
from xenia.errors import InvalidConfig, NotFound, NotSupported
from xenia.hostos.affinity import ranges
from xenia.hostos.cgroupfs import CgroupLayout, Hierarchy
from xenia.hostos.cpuset import CpusetGroup, choose_cpus

UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def cfg(**keys: object) -> DomainConfig:
    values: dict[str, object] = {"name": "ct1", "type": "container"}
    values.update(keys)
    return build_config(values, "<test>")  # type: ignore[arg-type]


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for d in ("bin", "sbin", "etc", "usr/bin"):
        (root / d).mkdir(parents=True)
    busybox = root / "bin/busybox"
    busybox.write_text("#!/bin/sh\n")
    busybox.chmod(0o755)
    os.symlink("/bin/busybox", root / "sbin/init")  # absolute: inside the root
    os.symlink("../../bin/busybox", root / "usr/bin/env")
    (root / "etc/passwd").write_text("root::0:0::/root:/bin/sh\n")
    return root


# -- config checks ------------------------------------------------------------------------
@pytest.mark.parametrize("keys, key", [
    ({"kernel": "/boot/vmlinuz"}, "kernel"),
    ({"ramdisk": "/boot/initrd"}, "ramdisk"),
    ({"disk": ["/tmp/d.img,raw,xvda,rw"]}, "disk"),
    ({"pci": ["0000:00:1f.0"]}, "pci"),
    ({"vnc": 1}, "vnc"),
    ({"serial": "pty"}, "serial"),
    ({"usb": 1}, "usb"),
    ({"boot": "c"}, "boot"),
    ({"boot_watchdog": 60}, "boot_watchdog"),
])
def test_devices_a_container_cannot_have(keys: dict[str, object], key: str) -> None:
    with pytest.raises(InvalidConfig) as e:
        spec.check_config(cfg(**keys))
    assert f"'{key}' is set, but a container cannot have" in e.value.message
    assert "containers support rootfs, init, memory" in e.value.message


def test_accelerator_refused_and_plain_config_passes() -> None:
    with pytest.raises(InvalidConfig, match="no accelerator"):
        spec.check_config(cfg(accel="kvm"))
    spec.check_config(cfg(rootfs="/x", init="/sbin/init", memory=64, vcpus=2, cpus="0-1",
                          cpu_weight=512, cap=50, vif=["bridge=xenbr0"],
                          extra="xenia.ip=10.0.0.2/24"))


def test_rootfs_checks(rootfs: Path, tmp_path: Path) -> None:
    assert spec.check_rootfs(cfg(rootfs=str(rootfs))) == rootfs.resolve()
    with pytest.raises(InvalidConfig, match="needs its root filesystem"):
        spec.check_rootfs(cfg())
    with pytest.raises(InvalidConfig, match="not an absolute path"):
        spec.check_rootfs(cfg(rootfs="root"))
    with pytest.raises(NotFound, match="does not exist"):
        spec.check_rootfs(cfg(rootfs=str(tmp_path / "nope")))
    with pytest.raises(InvalidConfig, match="not a directory"):
        spec.check_rootfs(cfg(rootfs=str(rootfs / "etc/passwd")))
    with pytest.raises(InvalidConfig, match="host's own root"):
        spec.check_rootfs(cfg(rootfs="/"))
    for bad in ("/srv/a,b", "/srv/a:b", "/srv/a b", "/srv/a\\b"):
        with pytest.raises(InvalidConfig, match="overlayfs cannot take"):
            spec.check_rootfs(cfg(rootfs=bad))


def test_init_argv() -> None:
    assert spec.init_argv(cfg()) == ["/sbin/init"]
    assert spec.init_argv(cfg(init="/bin/sh -c 'sleep 1; echo \"a b\"'")) == [
        "/bin/sh", "-c", 'sleep 1; echo "a b"']
    with pytest.raises(InvalidConfig, match="cannot be split"):
        spec.init_argv(cfg(init="/bin/sh -c 'x"))
    with pytest.raises(InvalidConfig, match="init is empty"):
        spec.init_argv(cfg(init="  "))


def test_resolve_in_root_stays_inside(rootfs: Path) -> None:
    assert spec.resolve_in_root(rootfs, "/sbin/init") == rootfs / "bin/busybox"
    assert spec.resolve_in_root(rootfs, "/usr/bin/env") == rootfs / "bin/busybox"
    assert spec.resolve_in_root(rootfs, "/../../bin/busybox") == rootfs / "bin/busybox"
    assert spec.resolve_in_root(rootfs, "/etc/shadow") is None
    os.symlink("/etc/hostname", rootfs / "etc/escape")  # the host's file must not count
    assert spec.resolve_in_root(rootfs, "/etc/escape") is None
    os.symlink("loop", rootfs / "etc/loop")
    assert spec.resolve_in_root(rootfs, "/etc/loop") is None


def test_check_init(rootfs: Path) -> None:
    assert spec.check_init(cfg(), rootfs) == ["/sbin/init"]
    assert spec.check_init(cfg(init="sh -l"), rootfs) == ["sh", "-l"]  # found in PATH
    with pytest.raises(NotFound, match="does not exist in rootfs"):
        spec.check_init(cfg(init="/sbin/nope"), rootfs)
    with pytest.raises(InvalidConfig, match="not an executable file"):
        spec.check_init(cfg(init="/etc/passwd"), rootfs)
    with pytest.raises(InvalidConfig, match="not an executable file"):
        spec.check_init(cfg(init="/etc"), rootfs)
    with pytest.raises(InvalidConfig, match="absolute path"):
        spec.check_init(cfg(init="bin/busybox"), rootfs)


def test_userns_allowed_reads_the_sysctl(tmp_path: Path) -> None:
    f = tmp_path / "max"
    f.write_text("0\n")
    assert not spec.userns_allowed(f)
    f.write_text("15000\n")
    assert spec.userns_allowed(f)
    assert not spec.userns_allowed(tmp_path / "missing")


def test_build_spec() -> None:
    c = cfg(extra="xenia.ip=10.1.2.3/24 xenia.gw=10.1.2.1")
    doc = spec.build_spec(c, uuid=UUID, rootfs=Path("/run/xenia-containers") / UUID,
                          argv=["/sbin/init"], idmap=IdMap(1 << 30, 1 << 30),
                          machine="x86_64")
    json.dumps(doc)  # plain JSON
    assert doc["root"] == {"path": f"/run/xenia-containers/{UUID}", "readonly": False}
    assert doc["hostname"] == "ct1"
    proc = doc["process"]
    assert proc["args"] == ["/sbin/init"] and proc["terminal"] is False
    assert "XENIA_CMDLINE=xenia.ip=10.1.2.3/24 xenia.gw=10.1.2.1" in proc["env"]
    assert "container=xenia" in proc["env"]
    caps = set(proc["capabilities"]["bounding"])
    assert {"CAP_SYS_BOOT", "CAP_KILL"} <= caps
    assert not caps & {"CAP_NET_ADMIN", "CAP_MKNOD", "CAP_SYS_ADMIN", "CAP_SYS_MODULE",
                       "CAP_SYS_RAWIO"}
    linux = doc["linux"]
    assert [n["type"] for n in linux["namespaces"]] == [
        "user", "pid", "network", "ipc", "uts", "mount", "cgroup"]
    # Xenia's cgroups, not the runtime's.
    assert "resources" not in linux and "cgroupsPath" not in linux
    assert linux["uidMappings"] == [{"containerID": 0, "hostID": 1 << 30, "size": 65536}]
    assert "/proc/kcore" in linux["maskedPaths"] and "/proc/sys" in linux["readonlyPaths"]
    sc = linux["seccomp"]
    assert sc["defaultAction"] == "SCMP_ACT_ERRNO" and "SCMP_ARCH_X86_64" in sc["architectures"]
    assert not any("keyctl" in r["names"] for r in sc["syscalls"])
    mounts = {m["destination"]: m for m in doc["mounts"]}
    assert mounts["/sys"]["options"][-1] == "ro" and mounts["/tmp"]["type"] == "tmpfs"
    assert doc["annotations"]["org.xenia.uuid"] == UUID


# -- CPUs ---------------------------------------------------------------------------------------
def test_ranges() -> None:
    assert ranges([]) == ""
    assert ranges([3]) == "3"
    assert ranges([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8"


def test_choose_cpus_spreads_and_keeps() -> None:
    allowed = {0, 1, 2, 3}
    assert choose_cpus(allowed, 2) == {0, 1}
    assert choose_cpus(allowed, 2, load=Counter({0: 2, 1: 1})) == {2, 3}
    assert choose_cpus(allowed, 1, load=Counter({0: 1, 1: 1, 2: 1})) == {3}
    # growing keeps what it has, adds the least loaded
    assert choose_cpus(allowed, 3, {3}, Counter({0: 5})) == {1, 2, 3}
    # shrinking drops the most loaded, then the highest
    assert choose_cpus(allowed, 1, {0, 2}, Counter({0: 3})) == {2}
    assert choose_cpus(allowed, 2, {0, 1, 2}) == {0, 1}
    # CPUs no longer allowed are dropped
    assert choose_cpus({0, 1}, 2, {1, 3}) == {0, 1}
    with pytest.raises(ValueError):
        choose_cpus({0, 1}, 3)


def _fake_v1(tmp: Path) -> CgroupLayout:
    mount = tmp / "cpuset"
    mount.mkdir()
    (mount / "cpuset.cpus").write_text("0-3\n")
    (mount / "cpuset.mems").write_text("0\n")
    return CgroupLayout((Hierarchy(mount, 1, frozenset({"cpuset"})),))


def test_cpuset_group_on_a_fake_v1_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = _fake_v1(tmp_path)
    mount = layout.hierarchies[0].mount
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *a: object, **kw: object) -> None:  # cgroupfs makes the files
        real_mkdir(self, *a, **kw)  # type: ignore[arg-type]
        for f in ("cpuset.cpus", "cpuset.mems", "cgroup.procs"):
            if not (self / f).exists():
                (self / f).write_text("")

    monkeypatch.setattr(Path, "mkdir", mkdir)
    cs = CpusetGroup(UUID, name="ct1", layout=layout)
    assert cs.available() and not cs.exists()
    cs.create({1, 2})
    assert (mount / "xenia/cpuset.cpus").read_text() == "0-3"  # the parent got the host's
    assert (mount / "xenia/cpuset.mems").read_text() == "0"
    assert (mount / "xenia" / UUID / "cpuset.cpus").read_text() == "1-2"
    assert (mount / "xenia" / UUID / "cpuset.mems").read_text() == "0"
    assert cs.get() == {1, 2} and cs.procs == mount / "xenia" / UUID / "cgroup.procs"
    cs.set_cpus({3})
    assert cs.get() == {3}


def test_cpuset_group_on_a_fake_v2_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mount = tmp_path / "unified"
    mount.mkdir()
    (mount / "cgroup.subtree_control").write_text("cpu memory\n")
    layout = CgroupLayout((Hierarchy(mount, 2, frozenset({"cpuset", "cpu", "memory"}),
                                     frozenset({"cpuset", "cpu", "memory"})),))
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *a: object, **kw: object) -> None:
        real_mkdir(self, *a, **kw)  # type: ignore[arg-type]
        for f in ("cgroup.subtree_control", "cpuset.cpus", "cpuset.cpus.effective"):
            if not (self / f).exists():
                (self / f).write_text("")

    monkeypatch.setattr(Path, "mkdir", mkdir)
    cs = CpusetGroup(UUID, layout=layout)
    cs.create({0, 1})
    # "+cpuset" written (the kernel would add it to the list; the fake file keeps the write)
    assert (mount / "cgroup.subtree_control").read_text() == "+cpuset"
    assert (mount / "xenia/cgroup.subtree_control").read_text() == "+cpuset"
    assert (mount / "xenia" / UUID / "cpuset.cpus").read_text() == "0-1"


def test_cpuset_missing_controller_is_not_supported(tmp_path: Path) -> None:
    cs = CpusetGroup(UUID, layout=CgroupLayout(()))
    assert not cs.available() and not cs.exists()
    with pytest.raises(NotSupported, match="cpuset controller is not available"):
        cs.create({0})
    cs.remove()  # nothing to do


# -- exits ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("status, requested, kind", [
    ({"signal": signal.SIGHUP}, None, "reboot"),  # reboot() in the pid namespace
    ({"signal": signal.SIGINT}, None, "poweroff"),  # poweroff/halt there
    ({"signal": signal.SIGINT}, "reboot", "poweroff"),  # the kernel's word wins
    ({"signal": signal.SIGKILL}, "reboot", "reboot"),  # reboot -F
    ({"code": 0}, "reboot", "reboot"),  # an init that just exits when asked
    ({"code": 0}, None, "poweroff"),  # init ended cleanly: the system is down
    ({"code": 1}, None, "crash"),
    ({"signal": signal.SIGKILL}, None, "crash"),  # e.g. the OOM killer took init
    ({"signal": signal.SIGSEGV}, "poweroff", "poweroff"),
    (None, None, "exited"),  # the monitor was killed: nobody saw how it ended
    (None, "poweroff", "poweroff"),
])
def test_classify(status: dict[str, int] | None, requested: str | None, kind: str) -> None:
    assert classify(status, requested) == kind


# -- the console relay ---------------------------------------------------------------------------
RELAY = r"""
import os, sys, time
from pathlib import Path
from xenia.containers.monitor import Relay
run = Path(sys.argv[1])
master, slave = os.openpty()
pid = os.fork()
if pid == 0:  # a stand-in for the container's init, on the pty
    os.setsid()
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(master)
    os.write(1, b"hello from init\n")
    line = sys.stdin.readline()
    os.write(1, ("got " + line).encode())
    os._exit(7)
os.close(slave)
Relay(run, master, pid).loop()
print("relay done", flush=True)
"""


def test_relay_serves_the_console_and_records_the_exit(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", RELAY, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        sock_path = tmp_path / "console.sock"
        deadline = time.monotonic() + 10
        while not sock_path.exists():
            assert time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        while b"hello from init" not in (tmp_path / "console.log").read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # Output before the client came is in the log only; input goes to the pty.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(sock_path))
            s.sendall(b"ping\n")
            s.settimeout(10)
            got = b""
            while b"got ping" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        assert b"got ping" in got
        out, err = proc.communicate(timeout=20)
        assert "relay done" in out, err
    finally:
        proc.kill()
    assert json.loads((tmp_path / "exit.json").read_text())["code"] == 7
    assert "got ping" in (tmp_path / "console.log").read_text()
    assert not sock_path.exists()  # its own socket is removed when the pty closes


def test_monitor_reports_a_failure_on_its_status_fd(tmp_path: Path) -> None:
    """A monitor that cannot start says why on the status pipe (here: no such crun).

    As root it gets as far as running crun (its mounts live in its own mount namespace and
    go with it); as another user it fails earlier, at unshare. Either way the reason comes
    back on the status fd and the exit status is 1."""
    for d in ("lower", "u", "w", "mnt"):
        (tmp_path / d).mkdir()
    (tmp_path / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "mounts": []}))
    r, w = os.pipe()
    args = ["--dir", str(tmp_path), "--id", "x", "--crun", "/nonexistent/crun",
            "--state-root", str(tmp_path / "crun"), "--status-fd", str(w), "--lower",
            str(tmp_path / "lower"), "--upper", str(tmp_path / "u"), "--work",
            str(tmp_path / "w"), "--mount-base", str(tmp_path / "mnt"), "--no-fork"]
    proc = subprocess.run([sys.executable, "-m", "xenia.containers.monitor", *args],
                          pass_fds=(w,), capture_output=True, text=True, timeout=60)
    os.close(w)
    line = os.read(r, 65536).decode()
    os.close(r)
    msg = json.loads(line)
    assert proc.returncode == 1 and msg["ok"] is False and msg["error"], (line, proc.stderr)
    if os.geteuid() == 0:
        assert "/nonexistent/crun" in msg["error"], msg
    assert not os.path.ismount(tmp_path / "mnt")  # nothing leaked into this namespace
