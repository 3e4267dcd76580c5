"""Issue 10 §1: a real QEMU runs confined — not root, seccomp on, a private /dev, a
device allow-list, only the files it was given (and those given back when it ends).

One guest serves every assertion (module-scoped); they run in file order.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import pwd
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPClient
from qemu.qmp.qmp_client import ExecuteError

from tests.integration.harness import Host, Image, wait_until
from xenia.hostos import devbpf, qemuids
from xenia.hostos.cgroupfs import host_layout
from xenia.hostos.qemuids import UidRange
from xenia.qemu import confine

pytestmark = pytest.mark.integration

ORIG_UID, ORIG_GID, ORIG_MODE = 1234, 4321, 0o640


def status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def owner(p: Path) -> tuple[int, int, int]:
    st = os.stat(p)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def blockdev_add(host: Host, uuid: str, path: Path, read_only: bool) -> str:
    """QMP straight to a domain's QEMU (xeniad stopped: QEMU serves one QMP client):
    "opened" or QEMU's error."""
    qmp_sock = host.root / "run" / "domains" / uuid / "qmp.sock"

    async def add() -> str:
        qmp = QMPClient("test")
        await qmp.connect(str(qmp_sock))
        try:
            await qmp.execute("blockdev-add", {"driver": "file", "node-name": "stolen",
                                               "filename": str(path),
                                               "read-only": read_only})
            return "opened"
        except ExecuteError as e:
            return str(e)
        finally:
            await qmp.disconnect()

    return asyncio.run(add())


def v2_mount() -> Path | None:
    v2 = [h for h in host_layout().hierarchies if h.version == 2]
    return v2[0].mount if v2 else None


def disk_file(path: Path) -> Path:
    with open(path, "wb") as f:
        f.truncate(16 * 1024 * 1024)
    os.chown(path, ORIG_UID, ORIG_GID)
    os.chmod(path, ORIG_MODE)
    return path


@pytest.fixture(scope="module")
def confined(tiny_image: Image) -> Iterator[tuple[Host, dict[str, Any], Path]]:
    h = Host(tiny_image)
    disks = h.root / "disks"
    disks.mkdir(mode=0o700)
    disk_file(disks / "mine.img")
    disk_file(disks / "other-domain.img")  # a disk this domain was not given
    try:
        h.start_daemon()
        dom = h.create("c1", disk=[f"format=raw,vdev=xvdb,access=rw,target={disks}/mine.img"])
        yield h, dom, disks
    except BaseException:
        h.dump_logs()
        raise
    finally:
        h.cleanup()


def test_qemu_runs_as_its_own_user_with_seccomp(confined: tuple[Host, dict[str, Any], Path]
                                                 ) -> None:
    _, dom, _ = confined
    st = status(dom["runtime"]["pid"])
    qemu_uid = dom["runtime"]["confinement"]["uid"]  # its own, from Xenia's range
    assert qemu_uid != 0 and UidRange.from_env().holds(qemu_uid)
    assert st["Uid"].split() == [str(qemu_uid)] * 4
    assert st["Gid"].split() == [str(pwd.getpwnam("xenia-qemu").pw_gid)] * 4
    assert st["Groups"] == ""
    assert st["Seccomp"] == "2"
    assert st["NoNewPrivs"] == "1"
    # QEMU's own filter, with exactly the options docs/security.md names, once.
    argv = Path(f"/proc/{dom['runtime']['pid']}/cmdline").read_bytes().split(b"\0")
    assert argv.count(b"-sandbox") == 1
    assert argv[argv.index(b"-sandbox") + 1] == confine.SANDBOX.encode()
    assert confine.SANDBOX == ("on,obsolete=deny,elevateprivileges=deny,spawn=deny,"
                               "resourcecontrol=deny")


def test_private_dev_and_device_allow_list(confined: tuple[Host, dict[str, Any], Path]
                                           ) -> None:
    _, dom, _ = confined
    pid = dom["runtime"]["pid"]
    # QEMU's root as its own mount namespace sees it.
    dev = Path(f"/proc/{pid}/root/dev")
    uffd = ["userfaultfd"] if os.path.exists("/dev/userfaultfd") else []  # post-copy
    assert sorted(os.listdir(dev)) == sorted(["full", "net", "null", "random", "urandom",
                                              "zero", *uffd])
    if uffd:
        assert os.stat(dev / "userfaultfd").st_uid == dom["runtime"]["confinement"]["uid"]
    assert os.listdir(dev / "net") == ["tun"]
    assert os.stat(f"/proc/{pid}/root/dev").st_dev != os.stat("/dev").st_dev
    groups = qemu_groups(pid)
    if "devices" in groups:  # cgroup v1 (this machine); v2 has no devices.allow
        path = Path("/sys/fs/cgroup/devices") / groups["devices"].lstrip("/")
        assert path.name == dom["uuid"]
        allowed = set((path / "devices.list").read_text().split("\n")) - {""}
        assert allowed == {"c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
                           "c 10:200 rwm", *(["c 10:257 rwm"] if uffd else [])}
    assert dom["runtime"]["confinement"]["user"] == "xenia-qemu"
    # cgroup v2 (here the unified mount of a hybrid host): the BPF allow-list is attached
    # to QEMU's v2 group.
    v2 = v2_mount()
    assert v2 is not None, "this test host has cgroup2 mounted"
    group = v2 / groups[""].lstrip("/")
    assert group.name == dom["uuid"]
    gfd = os.open(group, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert len(devbpf.query(gfd)) == 1
    finally:
        os.close(gfd)
    conf = dom["runtime"]["confinement"]
    assert conf["device_cgroup"] is True and "bpf" in conf["device_cgroup_layers"]


def open_in_group(procs: Path, paths: list[str]) -> str:
    """Open each of `paths` (read-only) from a child process that joined only the cgroup
    of `procs` (cgroup.procs): "ok" or the errno for each, comma-separated."""
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        out = []
        try:
            procs.write_text(str(os.getpid()))
            for path in paths:
                try:
                    os.close(os.open(path, os.O_RDONLY))
                    out.append("ok")
                except OSError as e:
                    out.append(str(e.errno))
        finally:
            os.write(wr, ",".join(out).encode())
            os._exit(0)
    os.close(wr)
    os.waitpid(pid, 0)
    with os.fdopen(rd) as f:
        return f.read()


def qemu_groups(pid: int) -> dict[str, str]:
    """controller list -> group path of process `pid` ("" is cgroup v2's)."""
    return dict(line.split(":", 2)[1:] for line in
                Path(f"/proc/{pid}/cgroup").read_text().splitlines())


def test_hotplugged_block_device_leaves_qemus_dev_when_detached(
        confined: tuple[Host, dict[str, Any], Path]) -> None:
    """A `phy:` disk (a loop device) hot-plugged: its node is made in QEMU's private /dev
    and allowed in both device cgroups; detached, it is gone from both and QEMU cannot
    open it again (QMP blockdev-add of its path fails)."""
    host, dom, disks = confined
    backing = disk_file(disks / "loop.img")
    loop = subprocess.run(["losetup", "--find", "--show", "--", str(backing)], check=True,
                          capture_output=True, text=True).stdout.strip()
    try:
        rdev = os.stat(loop).st_rdev
        rule = f"b {os.major(rdev)}:{os.minor(rdev)} rwm"
        pid = dom["runtime"]["pid"]
        groups = qemu_groups(pid)
        v1 = Path("/sys/fs/cgroup/devices") / groups["devices"].lstrip("/")
        v2 = v2_mount()
        assert v2 is not None
        v2_procs = v2 / groups[""].lstrip("/") / "cgroup.procs"
        assert open_in_group(v2_procs, [loop]) == str(errno.EPERM)  # not given yet
        host.xenia("block-attach", "c1", f"format=raw,vdev=xvdd,access=rw,target={loop}")
        in_qemu = Path(f"/proc/{pid}/root{loop}")
        assert stat.S_ISBLK(os.stat(in_qemu).st_mode) and os.stat(in_qemu).st_rdev == rdev
        assert os.stat(in_qemu).st_uid == dom["runtime"]["confinement"]["uid"]
        assert rule in (v1 / "devices.list").read_text().splitlines()
        assert open_in_group(v2_procs, [loop]) == "ok"  # the replaced v2 program allows it
        assert loop in host.domain("c1")["runtime"]["confinement"]["private_dev"]
        host.xenia("block-detach", "c1", "xvdd")
        assert not os.path.lexists(in_qemu)
        assert rule not in (v1 / "devices.list").read_text().splitlines()
        assert open_in_group(v2_procs, [loop]) == str(errno.EPERM)
        assert loop not in host.domain("c1")["runtime"]["confinement"]["private_dev"]
        assert os.stat(loop).st_uid == 0  # the host's node given back
        gfd = os.open(v2_procs.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert len(devbpf.query(gfd)) == 1  # replaced, never piled up
        finally:
            os.close(gfd)
        # QMP straight to QEMU (the next test needs xeniad stopped too).
        host.kill_daemon()
        err = blockdev_add(host, dom["uuid"], Path(loop), False)
        assert "No such file or directory" in err, err
    finally:
        subprocess.run(["losetup", "--detach", loop], check=False)


def test_given_disk_is_qemus_and_an_ungiven_one_is_refused(
        confined: tuple[Host, dict[str, Any], Path]) -> None:
    host, dom, disks = confined
    # Its QEMU's uid; the group kept (the QEMU group is every QEMU's).
    assert owner(disks / "mine.img")[:2] == (dom["runtime"]["confinement"]["uid"], ORIG_GID)
    assert owner(disks / "other-domain.img") == (ORIG_UID, ORIG_GID, ORIG_MODE)
    # QMP straight to QEMU (xeniad lets go of it while stopped; the guest runs on).
    host.kill_daemon()
    for ro in (True, False):
        err = blockdev_add(host, dom["uuid"], disks / "other-domain.img", ro)
        assert "Permission denied" in err, err
    # A host file outside anything given: the same.
    assert "Permission denied" in blockdev_add(host, dom["uuid"],
                                               host.root / "state" / "xenia.db", True)


def test_adoption_waits_out_a_stalled_qmp(confined: tuple[Host, dict[str, Any], Path]
                                          ) -> None:
    """§4: QMP busy when xeniad starts (a client holds QEMU's one QMP connection): the
    domain is kept, not forgotten, and adopted once QMP answers again."""
    host, dom, _ = confined
    assert host.daemon is None  # stopped by the test before
    qmp_sock = host.root / "run" / "domains" / dom["uuid"] / "qmp.sock"
    holder = socket.socket(socket.AF_UNIX)
    holder.connect(str(qmp_sock))
    assert holder.recv(4096).startswith(b'{"QMP"')  # QEMU serves this client now
    try:
        host.start_daemon(40.0)
        assert "cannot be adopted now" in host.daemon_log.read_text()
        assert host.domain("c1")["uuid"] == dom["uuid"]  # kept
        refused = host.xenia("pause", "c1", check=False)
        assert refused.returncode != 0 and "could not take it over yet" in refused.stderr
    finally:
        holder.close()
    wait_until(lambda: host.xenia("pause", "c1", check=False).returncode == 0, 40.0,
               what="the retried adoption")
    host.xenia("unpause", "c1")
    assert host.domain("c1")["runtime"]["pid"] == dom["runtime"]["pid"]


def test_two_running_domains_cannot_open_each_others_disks(
        confined: tuple[Host, dict[str, Any], Path]) -> None:
    """Issue 10's acceptance test across two running domains: each QEMU has its own uid,
    and B's QEMU cannot open A's disk (nor A B's); a restarted xeniad gives B's files
    back and frees its uid."""
    host, a, disks = confined
    disk_file(disks / "b.img")
    # No need to wait for B's guest: its QEMU is what is tested.
    b = host.create("c2", wait_ready=False,
                    disk=[f"format=raw,vdev=xvdb,access=rw,target={disks}/b.img"])
    uid_a, uid_b = (d["runtime"]["confinement"]["uid"] for d in (a, b))
    assert uid_a != uid_b and 0 not in (uid_a, uid_b)
    assert status(a["runtime"]["pid"])["Uid"].split()[0] == str(uid_a)  # ps's view
    assert status(b["runtime"]["pid"])["Uid"].split()[0] == str(uid_b)
    assert owner(disks / "b.img")[0] == uid_b and owner(disks / "mine.img")[0] == uid_a
    console_linked_to_anothers_is_refused(host, a, b)
    host.kill_daemon()
    try:
        for ro in (True, False):
            err = blockdev_add(host, b["uuid"], disks / "mine.img", ro)
            assert "Permission denied" in err, err
        err = blockdev_add(host, a["uuid"], disks / "b.img", True)
        assert "Permission denied" in err, err
    finally:
        # A's qmp.sock made a link to B's while no xeniad runs: the restarted one must
        # not adopt A through B's QMP (its `destroy c1` would quit B).
        with linked(host, a, b, "qmp.sock"):
            host.start_daemon(40.0)
            refused = [ln for ln in host.daemon_log.read_text().splitlines()
                       if "cannot be adopted now" in ln and "QMP socket" in ln]
            assert refused and f"its listener is uid {uid_b}" in refused[-1], refused
            assert host.domain("c1")["uuid"] == a["uuid"]  # kept, adoption retried
    wait_until(lambda: host.xenia("pause", "c1", check=False).returncode == 0, 20.0,
               what="A's adoption once its qmp.sock is its own again")
    host.xenia("unpause", "c1")
    assert status(b["runtime"]["pid"])["State"][0] in "RS"  # B untouched
    claim = qemuids.CLAIMS / str(uid_b)
    assert claim.exists()
    # Adopted: both uids' claims name the new xeniad (the old one's pid would make them
    # stale, and free for a new domain, the moment their QEMU dies).
    assert host.daemon is not None
    for uid, d in ((uid_a, a), (uid_b, b)):
        wait_until(lambda u=uid, d=d: (qemuids.CLAIMS / str(u)).read_text().split()
                   == [str(host.daemon.pid), d["uuid"]], 20.0, what=f"uid {uid}'s claim")
    host.xenia("destroy", "c2")
    assert owner(disks / "b.img") == (ORIG_UID, ORIG_GID, ORIG_MODE)
    assert not claim.exists()  # uid b freed


@contextlib.contextmanager
def linked(host: Host, a: dict[str, Any], b: dict[str, Any], name: str) -> Iterator[None]:
    """A's socket `name` a symlink to B's, as A's QEMU (owner of its run dir) could make
    it; A's own socket put back after."""
    run = host.root / "run" / "domains"
    mine, aside = run / a["uuid"] / name, run / a["uuid"] / f"{name}.aside"
    os.rename(mine, aside)
    try:
        os.symlink(run / b["uuid"] / name, mine)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(mine)
        os.rename(aside, mine)


def console_linked_to_anothers_is_refused(host: Host, a: dict[str, Any], b: dict[str, Any]
                                          ) -> None:
    """A's console.sock a link to B's: `xenia console c1` and the console WebSocket are
    refused (naming B's QEMU's uid), never B's console; A's record is untouched."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import unix_connect

    uid_a, uid_b = (d["runtime"]["confinement"]["uid"] for d in (a, b))
    before = host.domain("c1")
    with linked(host, a, b, "console.sock"):
        res = host.xenia("console", "c1", "--run", "echo x", "--timeout", "5", check=False)
        assert res.returncode != 0
        assert f"uid {uid_b}" in res.stderr and f"uid {uid_a}" in res.stderr, res.stderr
        with pytest.raises(InvalidStatus):  # refused before the WebSocket is accepted
            unix_connect(str(host.root / "run" / "xeniad.sock"),
                         "ws://xeniad/v1/domains/c1/console", open_timeout=10).close()
    after = host.domain("c1")
    assert (after["state"], after["runtime"]) == (before["state"], before["runtime"])


def test_hotplugged_disk_given_then_given_back(confined: tuple[Host, dict[str, Any], Path]
                                               ) -> None:
    host, _, disks = confined
    extra = disk_file(disks / "extra.img")
    host.xenia("block-attach", "c1", f"format=raw,vdev=xvdc,access=rw,target={extra}")
    assert owner(extra)[0] == host.domain("c1")["runtime"]["confinement"]["uid"]
    host.xenia("block-detach", "c1", "xvdc")
    assert owner(extra) == (ORIG_UID, ORIG_GID, ORIG_MODE)


def test_files_given_back_after_destroy(confined: tuple[Host, dict[str, Any], Path]) -> None:
    host, dom, disks = confined
    host.xenia("destroy", "c1")
    assert owner(disks / "mine.img") == (ORIG_UID, ORIG_GID, ORIG_MODE)
    # The directory QEMU could search for the disk: its ACL entry is gone again.
    assert stat.S_IMODE(os.stat(disks).st_mode) == 0o700
    with pytest.raises(OSError):
        os.getxattr(disks, "system.posix_acl_access")
    ledger = host.root / "state" / "ownership.json"
    assert json.loads(ledger.read_text()) == {}
    v2 = v2_mount()
    assert v2 is not None and not (v2 / "xenia" / dom["uuid"]).exists()


def test_v2_device_program_allows_only_listed_nodes(tmp_path: Path) -> None:
    """The BPF program alone (the process joins only the v2 group): /dev/null opens, a
    /dev/mem node (c 1:1) and a /dev/zero node (c 1:5) made elsewhere do not, even for
    root; once the second is allowed (as a hot-plugged device is), it opens, the first
    still does not, and the old program is gone."""
    uuid = "0badc0de-0000-4000-8000-00000000beef"
    procs, layers = confine.setup_device_cgroup(uuid, [("/dev/null", False)])
    mem, zero = tmp_path / "mem", tmp_path / "zero"
    os.mknod(mem, stat.S_IFCHR | 0o600, os.makedev(1, 1))
    os.mknod(zero, stat.S_IFCHR | 0o600, os.makedev(1, 5))
    v2_procs = [p for p in procs if v2_mount() in p.parents]

    def opens() -> str:
        return open_in_group(v2_procs[0], ["/dev/null", str(mem), str(zero)])

    def programs() -> list[int]:
        gfd = os.open(v2_procs[0].parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return devbpf.query(gfd)
        finally:
            os.close(gfd)

    try:
        assert "bpf" in layers and len(v2_procs) == 1
        assert os.geteuid() == 0
        assert opens() == f"ok,{errno.EPERM},{errno.EPERM}"
        before = programs()
        confine.allow_node(uuid, str(zero), ["/dev/null"])
        assert opens() == f"ok,{errno.EPERM},ok"
        after = programs()
        assert len(after) == 1 and after != before
    finally:
        confine.remove_device_cgroup(uuid)
    assert not v2_procs[0].parent.exists()
