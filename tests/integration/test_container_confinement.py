"""What holds a container domain in, tried from inside real containers (crun, the busybox
rootfs): seccomp allow-list, capabilities, no new privileges, masked /proc, nft, device
nodes, the pids limit against a fork bomb, swap held to the memory limit, and user ids of
each container's own.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration import test_containers as base
from tests.integration.conftest import CACHE
from tests.integration.harness import Host, wait_until
from tests.integration.test_containers import Containers, fails
from xenia.containers import limits
from xenia.hostos.cgroups import DomainCgroup

pytestmark = base.pytestmark
# The container fixture of test_containers.py, on this module's rootfs_image.
ct = base.ct

NFT = "/usr/sbin/nft"  # scripts/install-deps.sh installs nftables


def _put(root: Path, src: Path, dest: str, owner: int) -> None:
    """Copy host file `src` (links followed) to `dest` under `root`, it and the
    directories made for it owned by `owner` (the rootfs's owner)."""
    target = root / dest.lstrip("/")
    for d in reversed(target.parents):  # from / down
        if root in d.parents and not d.exists():
            d.mkdir()
            os.chown(d, owner, owner)
    shutil.copy2(src, target)
    os.chown(target, owner, owner)


def _ldd_closure(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    return sorted(set(re.findall(r"(/\S+) \(0x", out)))


@pytest.fixture(scope="module")
def rootfs_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox rootfs of test_containers.py (the same cached build), copied, with
    the host's nft and the libraries it loads (to show netfilter is shut, not that nft
    is missing), and two device nodes a container could open but for its nodev overlay:
    /root/mem (c 1 1, the host's memory) and /root/zero (c 1 5, harmless)."""
    from xenia.images.rootfs import build_rootfs

    src = build_rootfs(CACHE / "images", cache_dir=CACHE / "debs", progress=lambda s: None).path
    root = tmp_path_factory.mktemp("confinement") / "rootfs"
    subprocess.run(["cp", "-a", "--", str(src), str(root)], check=True)
    owner = root.stat().st_uid
    for lib in [NFT, *_ldd_closure(NFT)]:
        _put(root, Path(lib), lib, owner)
    for name, minor in (("mem", 1), ("zero", 5)):
        node = root / "root" / name
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, minor))
        os.chown(node, owner, owner)
    return root

CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_SYS_BOOT, CAP_MKNOD = 12, 21, 22, 27


def rc(host: Host, name: str, command: str) -> int:
    """Exit status of `command` in the container (its output dropped)."""
    out = host.run(name, f"{command} >/dev/null 2>&1; echo rc=$?").strip()
    return int(out.rsplit("rc=", 1)[1])


def outputs(host: Host, name: str, *commands: str) -> list[tuple[str, int]]:
    """Output (stderr too) and exit status of each command, run in turn in the container
    in one console round trip."""
    out = host.run(name, "; ".join(f"{c} 2>&1; echo @rc=$?" for c in commands))
    parts = out.split("@rc=")
    return [(text.split("\n", 1)[-1] if i else text, int(parts[i + 1].split()[0]))
            for i, text in enumerate(parts[:-1])]


def status_field(host: Host, name: str, field: str) -> str:
    out = host.run(name, f"grep '^{field}:' /proc/self/status").strip()
    return out.split(":", 1)[1].strip()


def test_a_container_cannot_reach_past_its_namespaces(ct: Containers, host: Host) -> None:
    dom = ct.create("ct1")
    # Seccomp in force, no new privileges, the default capabilities only.
    assert status_field(host, "ct1", "Seccomp") == "2"
    assert status_field(host, "ct1", "NoNewPrivs") == "1"
    eff = int(status_field(host, "ct1", "CapEff"), 16)
    assert eff & (1 << CAP_SYS_BOOT)
    assert not eff & (1 << CAP_NET_ADMIN | 1 << CAP_SYS_ADMIN | 1 << CAP_MKNOD)
    # No new user namespace (seccomp refuses unshare and clone with namespace flags),
    # no mount, no network management without CAP_NET_ADMIN.
    for cmd in ("unshare -U true", "unshare -r true", "unshare -m true",
                "unshare -n true", "mount -t tmpfs t /mnt", "mount --bind /bin /mnt",
                "ip link add name xbr0 type bridge", "ip link set lo down",
                "ip link set lo mtu 1280",
                "ip addr add 192.0.2.9/32 dev lo", "ip route add 198.51.100.0/24 dev lo",
                "hostname other"):
        assert rc(host, "ct1", cmd) != 0, cmd
    assert host.run("ct1", "ip -o link show lo").count("UP") >= 1  # still up: set by Xenia
    # Nor netfilter: nft is there and runs (the NET_ADMIN test below), netlink refuses it.
    # The host's kernel memory and kernel state are masked (/proc/interrupts is 0444 on
    # the host: only the mask hides it); /proc/sys is read-only, which alone stops root of
    # the container's namespaces writing their own sysctls (it may in a plain
    # `unshare -U -r -i -n`, even without CAP_NET_ADMIN). No device cgroup: device nodes
    # in its rootfs open nothing (the overlay is nodev), and it cannot make its own.
    (nft_list, nft_add, masked, forward, shmmax, mem, zero, mknod) = outputs(
        host, "ct1", "nft list ruleset", "nft add table inet t",
        "for p in /proc/kcore /proc/keys /proc/timer_list /proc/interrupts; do "
        "head -c 64 $p 2>/dev/null | wc -c; done",
        "echo 1 > /proc/sys/net/ipv4/ip_forward", "echo 4096 > /proc/sys/kernel/shmmax",
        "head -c 1 /root/mem", "head -c 1 /root/zero", "mknod /root/null c 1 3")
    for out, code in (nft_list, nft_add):
        assert code != 0 and "Operation not permitted" in out, out
    assert masked[0].split() == ["0", "0", "0", "0"], masked
    for out, code in (forward, shmmax):
        assert code != 0 and "Read-only file system" in out, out
    # Where the lower layer is an idmapped mount the nodes are there (a shifted copy
    # leaves them out).
    refused = ("ermission denied" if "--lower-uid-map" in dom["runtime"]["lower"]
               else "No such file")
    for out, code in (mem, zero):
        assert code != 0 and refused in out, out
    assert mknod[1] != 0 and "not found" not in mknod[0], mknod
    assert host.run("ct1", "ls -A /sys/firmware | wc -l").strip() == "0"
    assert rc(host, "ct1", "echo 1 > /proc/sys/kernel/sysrq") != 0
    assert rc(host, "ct1", "echo 1 > /proc/sysrq-trigger") != 0
    # Root inside is the container's own host uid, not the host's root.
    ids = dom["runtime"]["userns"]
    assert host.run("ct1", "cat /proc/self/uid_map").split() == ["0", str(ids["uid"]), "65536"]
    assert host.run("ct1", "cat /proc/self/gid_map").split() == ["0", str(ids["gid"]), "65536"]
    # What the container still may do: its own files, processes, pipes, sockets.
    assert host.run("ct1", "echo ok > /tmp/f && cat /tmp/f | tr o O").strip() == "Ok"
    assert rc(host, "ct1", "ping -c 1 -W 2 127.0.0.1") == 0


def test_cap_add_net_admin_lets_it_manage_its_network(ct: Containers, host: Host) -> None:
    ct.create("ct1", cap_add=["NET_ADMIN"])
    assert int(status_field(host, "ct1", "CapEff"), 16) & (1 << CAP_NET_ADMIN)
    assert rc(host, "ct1", "ip link add name xbr0 type bridge") == 0
    assert rc(host, "ct1", "ip addr add 192.0.2.9/32 dev lo") == 0
    assert "xbr0" in host.run("ct1", "ip -o link show")
    assert "192.0.2.9/32" in host.run("ct1", "ip -o addr show dev lo")
    # nft runs and manages its own netns's tables: the refusals above are netlink's.
    # CAP_NET_ADMIN would let it write its netns's sysctls, the read-only /proc/sys not.
    add, listed, forward = outputs(host, "ct1", "nft add table inet t", "nft list ruleset",
                                   "echo 1 > /proc/sys/net/ipv4/ip_forward")
    assert add[1] == 0 and listed[1] == 0 and "table inet t" in listed[0], (add, listed)
    assert forward[1] != 0 and "Read-only file system" in forward[0], forward
    # A capability the config adds does not open what seccomp keeps shut.
    assert rc(host, "ct1", "unshare -U true") != 0


def test_a_fork_bomb_stops_at_the_pids_limit(ct: Containers, host: Host) -> None:
    other = ct.create("ct2")
    assert limits.pids_max(DomainCgroup(other["uuid"])) == limits.DEFAULT_PIDS_LIMIT

    def timed(argv: list[str]) -> float:
        start = time.monotonic()
        subprocess.run(argv, check=True, capture_output=True, timeout=120)
        return time.monotonic() - start

    baseline = max(timed(["/bin/true"]), 0.01)
    start = time.monotonic()
    host.xenia("list")
    list_baseline = time.monotonic() - start

    dom = ct.create("ct1", pids_limit=64)
    cg = DomainCgroup(dom["uuid"])
    assert limits.pids_max(cg) == 64
    pids_dir = cg.path("pids")

    def current() -> int:
        return int((pids_dir / "pids.current").read_text())

    def refused() -> int:  # forks the kernel refused at the limit ("max N")
        return int((pids_dir / "pids.events").read_text().split()[1])

    # A fork bomb whose every member also leaves a CPU spinner behind: the bomb itself
    # dies out once forks fail (busybox sh gives up on "can't fork"), its spinners stay.
    host.run("ct1", "(b() { (while :; do :; done) & b | b & }; b) >/dev/null 2>&1 &")
    wait_until(lambda: refused() > 0, timeout=60, what="the fork bomb to reach its limit")
    peak = pids_dir / "pids.peak"  # Linux >= 6.13 has it on v1 too
    if peak.exists():
        assert int(peak.read_text()) == 64
    samples = []
    for _ in range(10):
        samples.append(current())
        time.sleep(0.1)
    assert max(samples) <= 64 and min(samples) > 4, samples  # spinners, within the limit
    # The host is not starved: commands start and answer as before the bomb, give or
    # take a loaded CI machine.
    assert timed(["/bin/true"]) < max(2.0, 20 * baseline)
    start = time.monotonic()
    assert "ct1" in host.xenia("list").stdout
    assert time.monotonic() - start < max(5.0, 5 * list_baseline)
    # The other container is untouched by it.
    assert host.run("ct2", "echo alive").strip() == "alive"
    host.xenia("destroy", "ct1", timeout=120)
    assert ct.leftovers(dom) == []


def test_swap_is_held_to_the_memory_limit(ct: Containers, host: Host) -> None:
    dom = ct.create("ct1", memory=48, maxmem=128)
    cg = DomainCgroup(dom["uuid"])
    assert cg.memory_limit() == 48 << 20
    assert dom["runtime"]["swap_limited"] is (limits.swap_limit(cg) is not None)
    swap = limits.swap_limit(cg)
    h = cg.layout.hierarchy_for("memory")
    assert h is not None
    if h.version == 1:  # memory + swap together may not pass the memory limit
        assert swap == 48 << 20
    else:  # no swap at all
        assert swap == 0
    host.xenia("mem-set", "ct1", "96")
    assert cg.memory_limit() == 96 << 20
    assert limits.swap_limit(cg) == (96 << 20 if h.version == 1 else 0)
    host.xenia("mem-set", "ct1", "40")
    assert cg.memory_limit() == 40 << 20
    assert limits.swap_limit(cg) == (40 << 20 if h.version == 1 else 0)


def _ids(dom: dict[str, Any]) -> tuple[int, int]:
    u = dom["runtime"]["userns"]
    return u["uid"], u["uid"] + u["size"]


def test_user_ids_are_disjoint_and_freed_with_the_domain(ct: Containers, host: Host) -> None:
    d1 = ct.create("ct1")
    d2 = ct.create("ct2")
    (a1, b1), (a2, b2) = _ids(d1), _ids(d2)
    assert b1 <= a2 or b2 <= a1
    # Seen from the host: each container's processes run as its own ids.
    for dom in (d1, d2):
        status = Path(f"/proc/{dom['runtime']['pid']}/status").read_text()
        uid = int([ln for ln in status.splitlines() if ln.startswith("Uid:")][0].split()[1])
        assert _ids(dom)[0] == uid
    host.xenia("destroy", "ct1")
    # The freed range is the first free one again: the next container gets it.
    d3 = ct.create("ct3")
    assert _ids(d3) == (a1, b1)
    # A range asked for in the config: inside Xenia's ranges and nobody else's, or refused.
    taken = d2["runtime"]["userns"]["uid"]
    fails(host, ["create", str(ct.write("bad", idmap=f"{taken + 10}:100"))],
          "share ids with domain 'ct2'")
    fails(host, ["create", str(ct.write("bad", idmap="100000:65536"))],
          "lie outside the ranges /etc/subuid gives 'xenia'")
    fails(host, ["create", str(ct.write("bad", idmap="0:65536"))], "is the host's root")
    assert not host.has_domain("bad")
    free = max(b2, _ids(d3)[1]) + 65536
    d4 = ct.create("ct4", idmap=f"{free}:{free + 65536}:1000")
    assert host.run("ct4", "cat /proc/self/uid_map /proc/self/gid_map").split() == [
        "0", str(free), "1000", "0", str(free + 65536), "1000"]
    assert d4["runtime"]["userns"] == {"uid": free, "gid": free + 65536, "size": 1000}
