"""Container domains (`type = "container"`) with the real runtime (crun), driven through the
xenia CLI and checked from inside the containers and from the host.

The containers run the busybox rootfs (`xenia image build rootfs`, cached with the tiny
image). Every test's containers are destroyed through the daemon, and anything a failed
test leaves (monitors, container processes, cgroups) is killed and removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import CACHE
from tests.integration.harness import (
    COUNTER,
    READY,
    Host,
    listen,
    pid_alive,
    wait_until,
    write_xl_cfg,
)
from xenia.cli import console as con
from xenia.hostos.cgroupfs import host_layout
from xenia.hostos.cgroups import DomainCgroup
from xenia.hostos.cpuset import CpusetGroup

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, cgroups, veths)"),
]

CT_READY = "xenia-rootfs: ready"


@pytest.fixture(scope="session")
def rootfs_image() -> Path:
    from xenia.images.rootfs import build_rootfs

    return build_rootfs(CACHE / "images", cache_dir=CACHE / "debs", progress=lambda s: None).path


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def monitors_of(root: Path) -> list[int]:
    """Pids of container monitors of the Xenia root `root`."""
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            argv = _cmdline(int(p.name))
            if b"xenia.containers.monitor" in argv and any(str(root).encode() in a
                                                           for a in argv):
                found.append(int(p.name))
    return found


def cgroup_dirs(uuid: str) -> list[Path]:
    return [h.mount / "xenia" / uuid for h in host_layout().hierarchies
            if (h.mount / "xenia" / uuid).exists()]


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0


class Containers:
    """Container configs and checks on top of a Host."""

    def __init__(self, host: Host, rootfs: Path) -> None:
        self.host = host
        self.rootfs = rootfs
        self.uuids: set[str] = set()

    def write(self, name: str, **keys: Any) -> Path:
        cfg: dict[str, Any] = {"name": name, "type": "container", "rootfs": str(self.rootfs),
                               "memory": 64, "vcpus": 1}
        cfg.update(keys)
        return write_xl_cfg(self.host.cfgdir / f"{name}.cfg", cfg)

    def create(self, name: str, wait: bool = True, *flags: str, **keys: Any) -> dict[str, Any]:
        self.host.xenia("create", *flags, str(self.write(name, **keys)))
        dom = self.host.domain(name)
        self.uuids.add(dom["uuid"])
        if wait:
            self.host.wait_console(name, CT_READY, timeout=60)
        return dom

    def run(self, name: str, command: str, timeout: float = 30) -> str:
        return self.host.run(name, command, timeout=timeout)

    def leftovers(self, dom: dict[str, Any]) -> list[str]:
        """What of a destroyed container is still on the host."""
        uuid = dom["uuid"]
        left = []
        for key in ("pid", "monitor_pid"):
            pid = dom["runtime"].get(key)
            if pid and pid_alive(pid):
                left.append(f"{key} {pid}")
        left += [str(d) for d in cgroup_dirs(uuid)]
        left += [name for name in dom["runtime"].get("veths", {}).values() if link_exists(name)]
        run = self.host.root / "run"
        for d in (run / "domains" / uuid, run / "crun" / uuid):
            if d.exists():
                left.append(str(d))
        return left

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            for d in self.host.domains():
                self.host.xenia("destroy", d["name"], check=False, timeout=60)
        for pid in monitors_of(self.host.root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for uuid in self.uuids:
            cg = DomainCgroup(uuid)
            with contextlib.suppress(Exception):
                for pid in cg.pids():
                    os.kill(pid, signal.SIGKILL)
                cg.remove(timeout=5, evict=True)
            with contextlib.suppress(Exception):
                CpusetGroup(uuid).remove()


@pytest.fixture
def ct(host: Host, rootfs_image: Path) -> Iterator[Containers]:
    c = Containers(host, rootfs_image)
    try:
        yield c
    finally:
        c.cleanup()


def fails(host: Host, args: list[str], match: str) -> str:
    res = host.xenia(*args, check=False)
    assert res.returncode != 0 and match in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    return res.stderr


# -- create, console, list, top ---------------------------------------------------------------
def test_create_console_list_and_top(ct: Containers, host: Host) -> None:
    dom = ct.create("ct1")
    assert dom["type"] == "container" and dom["state"] == "running"
    assert host.run("ct1", "echo hello-$((6*7))").strip() == "hello-42"
    assert host.run("ct1", "hostname").strip() == "ct1"
    # A shell on a pty with job control: its own session, /dev/console its tty.
    assert host.run("ct1", "tty").strip() == "/dev/console"
    row = [ln for ln in host.xenia("list", "-v").stdout.splitlines() if ln.startswith("ct1 ")]
    assert row and row[0].split()[-1] == "container" and row[0].split()[2] == "64"
    top = host.xenia("top", "-b", "-i", "1").stdout
    ct_row = [ln for ln in top.splitlines() if ln.split() and ln.split()[0] == "ct1"]
    assert ct_row and ct_row[0].split()[-1] == "container", top
    stats = json.loads(host.xenia("top", "--json", "-i", "1").stdout.splitlines()[-1])
    rows = stats if isinstance(stats, list) else stats.get("domains", [])
    me = [r for r in rows if r.get("name") == "ct1"]
    assert me and 0 < me[0]["memory_kib"] < 64 * 1024
    # Piped console input, as for VMs.
    res = host.xenia("console", "ct1", input="echo piped-$((40+2))\n")
    assert "piped-42" in res.stdout
    # The console's exit status comes through.
    res = host.xenia("console", "--run", "sh -c 'exit 3'", "ct1", check=False)
    assert res.returncode == 3


def test_processes_and_files_are_the_containers_own(ct: Containers, host: Host) -> None:
    marker = Path("/tmp") / f"xenia-host-only-{secrets.token_hex(4)}"
    marker.write_text("host\n")
    try:
        ct.create("ct1")
        ct.create("ct2")
        for name in ("ct1", "ct2"):
            ps = host.run(name, "ps -o pid,comm")
            rows = [ln.split() for ln in ps.strip().splitlines()[1:]]
            comms = {r[1] for r in rows}
            # init, the console shell, ps itself (and the shell running the command)
            assert comms <= {"init", "sh", "ps"}, ps
            assert len(rows) <= 4 and ["1", "init"] in rows, ps
            pids = host.run(name, "ls /proc | grep -c '^[0-9]'").strip()
            assert int(pids) <= 5
            assert host.run(name, f"ls {marker} 2>&1 || echo absent").strip().endswith("absent")
        # Files: each container writes into its own copy of the image.
        host.run("ct1", "echo one > /root/mine; echo changed > /etc/motd")
        assert host.run("ct2", "cat /root/mine 2>&1 || echo absent").strip().endswith("absent")
        assert not (ct.rootfs / "root/mine").exists() and not (ct.rootfs / "etc/motd").exists()
        # Each container's user namespace maps its root to host ids Xenia gave it alone.
        ids = {n: host.domain(n)["runtime"]["userns"] for n in ("ct1", "ct2")}
        assert host.run("ct1", "cat /proc/self/uid_map").split() == [
            "0", str(ids["ct1"]["uid"]), "65536"]
        init = host.domain("ct1")["runtime"]["pid"]
        uid_line = [ln for ln in Path(f"/proc/{init}/status").read_text().splitlines()
                    if ln.startswith("Uid:")][0]
        assert uid_line.split()[1] == str(ids["ct1"]["uid"])
        assert abs(ids["ct1"]["uid"] - ids["ct2"]["uid"]) >= 65536
        # The container cannot reach past its namespaces.
        for cmd in ("mknod /tmp/sda b 8 0", "mount -t tmpfs t /mnt",
                    "echo 1 > /proc/sys/kernel/sysrq", "hostname other"):
            out = host.run("ct2", f"{cmd} >/dev/null 2>&1; echo rc=$?").strip()
            assert out.endswith("rc=1"), (cmd, out)
    finally:
        marker.unlink()


# -- limits ------------------------------------------------------------------------------------
def test_memory_limit_kills_inside_and_spares_the_host(ct: Containers, host: Host) -> None:
    dom = ct.create("ct1", memory=48)
    out = host.run("ct1", "dd if=/dev/zero of=/dev/null bs=100M count=1 2>/dev/null; "
                          "echo status=$?")
    assert "status=137" in out, out  # SIGKILL from the cgroup's OOM killer
    assert DomainCgroup(dom["uuid"]).oom_kills() >= 1
    assert host.run("ct1", "dd if=/dev/zero of=/dev/null bs=16M count=1 2>/dev/null; "
                           "echo status=$?").strip().endswith("status=0")
    assert host.domain("ct1")["state"] == "running"
    assert host.daemon is not None and host.daemon.poll() is None


def test_mem_set_changes_the_limit(ct: Containers, host: Host) -> None:
    dom = ct.create("ct1", memory=48, maxmem=256)
    cg = DomainCgroup(dom["uuid"])
    assert cg.memory_limit() == 48 << 20
    alloc = "dd if=/dev/zero of=/dev/null bs=100M count=1 2>/dev/null; echo status=$?"
    assert "status=137" in host.run("ct1", alloc)
    host.xenia("mem-set", "ct1", "200m")
    assert cg.memory_limit() == 200 << 20
    assert host.domain("ct1")["memory"] == 200
    assert host.run("ct1", alloc).strip().endswith("status=0")
    host.xenia("mem-set", "ct1", "48")
    assert "status=137" in host.run("ct1", alloc)
    fails(host, ["mem-set", "ct1", "300"], "above its maximum of 256 MiB")


def test_vcpu_set_changes_the_cpus_it_may_use(ct: Containers, host: Host) -> None:
    ncpu = len(os.sched_getaffinity(0))
    if ncpu < 2:
        pytest.skip("needs 2 host CPUs")
    dom = ct.create("ct1", vcpus=1, maxvcpus=2)
    assert host.run("ct1", "nproc").strip() == "1"
    host.xenia("vcpu-set", "ct1", "2")
    assert host.run("ct1", "nproc").strip() == "2"
    assert "Cpus_allowed_list:\t0-1" in host.run("ct1", "grep Cpus_allowed_list /proc/self/status")
    assert CpusetGroup(dom["uuid"]).get() == {0, 1}
    assert host.domain("ct1")["vcpus"] == 2
    rows = host.xenia("vcpu-list", "ct1").stdout.splitlines()[1:]
    assert len(rows) == 2
    host.xenia("vcpu-set", "ct1", "1")
    assert host.run("ct1", "nproc").strip() == "1"
    fails(host, ["vcpu-set", "ct1", "3"], "it can have 1 to 2")
    # cpus= picks which ones.
    ct.create("ct2", cpus="1")
    assert "Cpus_allowed_list:\t1" in host.run("ct2", "grep Cpus_allowed_list /proc/self/status")


def test_sched_credit_weight_and_cap(ct: Containers, host: Host) -> None:
    dom = ct.create("ct1", cpu_weight=512, cap=50)
    cg = DomainCgroup(dom["uuid"])
    assert cg.get() == {"weight": 512, "cap": 50}
    host.xenia("sched-credit", "-d", "ct1", "-w", "128", "-c", "0")
    assert cg.get() == {"weight": 128, "cap": 0}
    row = host.xenia("sched-credit", "-d", "ct1").stdout.splitlines()[1].split()
    assert row[2:] == ["128", "0"]


def test_pause_freezes_the_container(ct: Containers, host: Host) -> None:
    dom = ct.create("ct1")
    host.run("ct1", COUNTER)
    counter = Path(f"/proc/{dom['runtime']['pid']}/root/tmp/cnt")

    def count() -> int:
        try:
            return int(counter.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    wait_until(lambda: count() > 3, what="the counter to run")
    host.xenia("pause", "ct1")
    assert host.domain("ct1")["state_letters"] == "--p---"
    assert DomainCgroup(dom["uuid"]).frozen()
    frozen_at = count()
    # The same loop on the host, not frozen: 20 of its steps are the time in which the
    # container's would have moved, however loaded the machine is.
    ref = Path(host.root) / "ref-count"
    ticker = subprocess.Popen(["sh", "-c", f"i=0; while :; do i=$((i+1)); echo $i > {ref}.n; "
                               f"mv {ref}.n {ref}; sleep 0.1; done"])
    try:
        wait_until(lambda: ref.exists() and int(ref.read_text() or 0) >= 20,
                   what="20 steps of the host's loop")
    finally:
        ticker.kill()
        ticker.wait()
    assert count() == frozen_at
    host.xenia("unpause", "ct1")
    wait_until(lambda: count() > frozen_at + 5, what="the counter to go on")
    assert host.domain("ct1")["state"] == "running"


# -- lifecycle --------------------------------------------------------------------------------
def test_reboot_keeps_the_domain_and_its_files(ct: Containers, host: Host) -> None:
    dom = ct.create("ct1")
    host.run("ct1", "echo kept > /root/file")
    host.xenia("reboot", "ct1")
    host.wait_console("ct1", CT_READY, count=2, timeout=60)
    after = wait_until(lambda: (d := host.domain("ct1"))["runtime"]["pid"] != dom["runtime"]["pid"]
                       and d, what="the new init's pid")
    assert after["domid"] == dom["domid"] and after["state"] == "running"
    assert not pid_alive(dom["runtime"]["pid"])
    assert host.run("ct1", "cat /root/file").strip() == "kept"
    # reboot -F: a hard reset, still a reboot.
    host.xenia("reboot", "-F", "ct1")
    host.wait_console("ct1", CT_READY, count=3, timeout=60)
    assert host.run("ct1", "echo up").strip() == "up"


def test_reboot_inside_and_on_reboot_destroy(ct: Containers, host: Host) -> None:
    ct.create("ct1")
    host.xenia("console", "ct1", input="reboot\n", check=False)
    host.wait_console("ct1", CT_READY, count=2, timeout=60)
    dom = ct.create("ct2", on_reboot="destroy")
    host.xenia("reboot", "ct2")
    host.wait_gone("ct2")
    assert ct.leftovers(dom) == []


def test_shutdown_wait_and_destroy_leave_nothing_behind(ct: Containers, host: Host) -> None:
    br = f"xtc{secrets.token_hex(3)}"
    host.xenia("network", "create", br)
    d1 = ct.create("ct1", vif=[f"bridge={br},rate=10Mb/s"])
    d2 = ct.create("ct2", vif=[f"bridge={br}"])
    assert all(link_exists(n) for n in d1["runtime"]["veths"].values())
    host.xenia("shutdown", "-w", "ct1", timeout=60)
    assert not host.has_domain("ct1")
    assert ct.leftovers(d1) == []
    host.xenia("destroy", "ct2")
    assert not host.has_domain("ct2")
    assert ct.leftovers(d2) == []
    assert monitors_of(host.root) == []
    assert list((host.root / "run" / "domains").iterdir()) == []
    # No rate-limit device outlives its vif.
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for veth in (*d1["runtime"]["veths"].values(), *d2["runtime"]["veths"].values()):
        assert f"rate limit of {veth}" not in out


def test_poweroff_inside_with_on_poweroff_preserve(ct: Containers, host: Host) -> None:
    dom = ct.create("ct1", on_poweroff="preserve")
    host.xenia("console", "ct1", input="poweroff\n", check=False)
    wait_until(lambda: host.domain("ct1")["state"] == "shutdown", what="state shutdown")
    assert host.domain("ct1")["state_letters"] == "---s--"
    assert "Requesting system poweroff" in host.console_log("ct1")
    host.xenia("start", "ct1")  # Xenia's start (issue 12): the same container boots again
    again = host.domain("ct1")
    assert again["state"] == "running" and again["uuid"] == dom["uuid"]
    assert again["runtime"]["pid"] != dom["runtime"]["pid"] and not pid_alive(dom["runtime"]["pid"])
    host.wait_console("ct1", CT_READY, timeout=60)
    assert ct.run("ct1", "echo alive-$((6*7))").strip().endswith("alive-42")
    host.xenia("destroy", "ct1")
    assert ct.leftovers(dom) == [] and ct.leftovers(again) == []


def test_create_paused_runs_nothing_until_unpaused(ct: Containers, host: Host) -> None:
    ct.create("ct1", False, "-p")
    d = host.domain("ct1")
    assert d["state"] == "paused" and d["state_letters"] == "--p---"
    # A second container's whole start is the time in which ct1, had it run, would have
    # printed its ready line.
    ct.create("ct2")
    assert host.console_log("ct1") == ""
    assert host.domain("ct1")["state"] == "paused"
    host.xenia("unpause", "ct1")
    host.wait_console("ct1", CT_READY, timeout=60)


def test_create_c_shows_the_whole_start(ct: Containers, host: Host) -> None:
    cfg = ct.write("ct1")
    res = host.xenia("create", "-c", str(cfg), input="", timeout=60)
    assert "xenia-rootfs: init in container ct1" in res.stdout and CT_READY in res.stdout
    ct.uuids.add(host.domain("ct1")["uuid"])


def test_a_root_owned_rootfs_runs_in_a_user_namespace_too(ct: Containers, host: Host) -> None:
    from xenia.images.rootfs import build_rootfs

    tree = build_rootfs(host.root / "img0", cache_dir=CACHE / "debs", owner=0,
                        progress=lambda s: None).path
    assert tree.stat().st_uid == 0
    dom = ct.create("ct1", rootfs=str(tree))
    ids = dom["runtime"]["userns"]
    assert ids["uid"] > 0 and ids["size"] == 65536
    assert host.run("ct1", "cat /proc/self/uid_map").split() == ["0", str(ids["uid"]), "65536"]
    # The image's root-owned files are container root's, seen through the idmapped mount;
    # what the container writes is owned by its host ids, and the image stays root's.
    assert host.run("ct1", "stat -c %u:%g /bin/busybox /etc").split() == ["0:0", "0:0"]
    host.run("ct1", "echo x > /etc/written-inside")
    upper = host.root / "run" / "domains" / dom["uuid"] / "fs" / "upper"
    st = (upper / "etc" / "written-inside").stat()
    assert (st.st_uid, st.st_gid) == (ids["uid"], ids["gid"])
    assert (tree / "bin" / "busybox").stat().st_uid == 0
    assert not (tree / "etc" / "written-inside").exists()
    # Root, but without the capabilities that reach the host: no device nodes, no mounts.
    for cmd in ("mknod /tmp/sda b 8 0", "mount -t tmpfs t /mnt",
                "echo 1 > /proc/sys/vm/drop_caches"):
        out = host.run("ct1", f"{cmd} >/dev/null 2>&1; echo rc=$?").strip()
        assert out.endswith("rc=1"), (cmd, out)
    assert host.run("ct1", "ps -o comm | grep -c .").strip() in ("4", "5")


def test_a_restart_that_cannot_start_ends_the_domain(ct: Containers, host: Host) -> None:
    from xenia.images.rootfs import build_rootfs

    tree = build_rootfs(host.root / "img1", cache_dir=CACHE / "debs", owner=0,
                        progress=lambda s: None).path
    dom = ct.create("ct1", rootfs=str(tree))
    tree.rename(tree.with_name("moved"))
    host.xenia("reboot", "ct1")
    host.wait_gone("ct1")  # on_crash=destroy, as for a VM that died
    assert ct.leftovers(dom) == []
    log = host.daemon_log.read_text()
    assert "restarting failed" in log and "does not exist" in log


def test_init_exiting_is_a_crash_or_a_poweroff(ct: Containers, host: Host) -> None:
    dom = ct.create("ct1", False, init="/bin/sh -c 'echo xenia-rootfs: ready; sleep 1; exit 3'",
                    on_crash="preserve")
    wait_until(lambda: host.domain("ct1")["state"] == "crashed", what="state crashed")
    host.xenia("destroy", "ct1")
    assert ct.leftovers(dom) == []
    ct.create("ct2", False, init="/bin/sh -c 'sleep 1'")  # exit 0: on_poweroff (destroy)
    host.wait_gone("ct2")
    # An init that ends at once may end while the create is still under way: the exit
    # still counts once the domain is built (never a "running" record of nothing).
    dom = ct.create("ct3", False, init="/bin/sh -c 'exit 3'", on_crash="preserve")
    wait_until(lambda: host.domain("ct3")["state"] == "crashed", what="state crashed")
    host.xenia("destroy", "ct3")
    assert ct.leftovers(dom) == []


# -- the daemon goes, the containers stay ------------------------------------------------------
def test_daemon_sigkill_readopts_a_running_container(ct: Containers, host: Host) -> None:
    dom = ct.create("ct1")
    console = Path(dom["console"])
    host.kill_daemon(signal.SIGKILL)
    assert pid_alive(dom["runtime"]["pid"]) and pid_alive(dom["runtime"]["monitor_pid"])
    # The monitor holds the console: it works without a daemon.
    text, rc = con.run(console, "echo no-daemon")
    assert text.strip() == "no-daemon" and rc == 0
    host.start_daemon()
    listed = host.domain("ct1")
    assert listed["state"] == "running" and listed["type"] == "container"
    assert listed["runtime"]["pid"] == dom["runtime"]["pid"]
    assert host.run("ct1", "echo back").strip() == "back"
    # What happens while no daemon watches is applied when one comes back.
    host.kill_daemon(signal.SIGKILL)
    con.run(console, "poweroff &")
    wait_until(lambda: not pid_alive(dom["runtime"]["pid"]), what="the container to stop")
    host.start_daemon()
    host.wait_gone("ct1")
    assert ct.leftovers(dom) == []


# -- networking with a VM -------------------------------------------------------------------------
def test_container_and_vm_exchange_tcp(ct: Containers, host: Host) -> None:
    br = f"xtc{secrets.token_hex(3)}"
    host.xenia("network", "create", br)
    net = f"10.{random.randint(150, 250)}.{random.randint(0, 255)}"
    host.create("vm1", wait_ready=False, vif=[f"bridge={br}"],
                extra=f"console=ttyS0 xenia.ip={net}.1/24")
    ct.create("ct1", vif=[f"bridge={br}"], extra=f"xenia.ip={net}.2/24")
    host.wait_console("vm1", READY)
    assert "0% packet loss" in host.run("ct1", f"ping -c 2 -W 2 {net}.1")

    def send(src: str, dst: str, dst_ip: str, port: int) -> None:
        sent = host.run(src, "dd if=/dev/urandom of=/tmp/f bs=1k count=512 2>/dev/null; "
                             "md5sum /tmp/f | cut -d' ' -f1").strip()
        listen(host, dst, port)
        host.run(src, f"nc {dst_ip} {port} < /tmp/f", timeout=60)
        wait_until(lambda: host.run(dst, "stat -c %s /tmp/r").strip() == str(512 * 1024),
                   timeout=60, what="all bytes at the receiver")
        assert host.run(dst, "md5sum /tmp/r | cut -d' ' -f1").strip() == sent

    send("vm1", "ct1", f"{net}.2", 5001)
    send("ct1", "vm1", f"{net}.1", 5002)


# -- bad input ---------------------------------------------------------------------------------
def test_bad_input_is_refused_and_nothing_changes(ct: Containers, host: Host) -> None:
    def refused(match: str, **keys: Any) -> None:
        fails(host, ["create", str(ct.write("bad", **keys))], match)
        assert not host.has_domain("bad")

    refused("rootfs '/nonexistent' does not exist", rootfs="/nonexistent")
    refused("a container needs its root filesystem", rootfs="")
    refused("'disk' is set, but a container cannot have disks",
            disk=["/tmp/x.img,raw,xvda,rw"])
    refused("'pci' is set, but a container cannot have PCI devices", pci=["0000:00:01.0"])
    refused("'kernel' is set, but a container cannot have a kernel", kernel="/boot/vmlinuz")
    refused("but the host has only", memory=10_000_000)
    ncpu = len(os.sched_getaffinity(0))
    refused(f"asks for {ncpu + 1} (vcpus) but the host has only {ncpu}", vcpus=ncpu + 1)
    refused(f"CPU {ncpu + 3} does not exist on this host", cpus=str(ncpu + 3))
    refused("init '/sbin/missing' does not exist", init="/sbin/missing")
    refused("bridge 'xtnosuch0' does not exist", vif=["bridge=xtnosuch0"])
    assert list((host.root / "run" / "domains").iterdir()) == []
    assert monitors_of(host.root) == []
    assert not (host.root / "run" / "crun").exists() or \
        list((host.root / "run" / "crun").iterdir()) == []


def test_image_build_rootfs_is_cached(ct: Containers, host: Host, rootfs_image: Path) -> None:
    from xenia.images.rootfs import build_rootfs

    first = build_rootfs(CACHE / "images", cache_dir=CACHE / "debs", progress=lambda s: None)
    again = build_rootfs(CACHE / "images", cache_dir=CACHE / "debs", progress=lambda s: None)
    assert first == again and first.path == rootfs_image
    assert (rootfs_image / "bin/busybox").is_file() and (rootfs_image / "sbin/init").is_symlink()
