"""The jail QEMU is exec'd from: `python -m xenia.qemu.jail SPEC -- qemu-system-x86_64 ...`.

A separate, single-threaded process, so that nothing here runs in a forked copy of the
multi-threaded xeniad (a preexec_fn there may deadlock on a lock another thread held).
In order:

1. join the domain's device cgroups (v1 and v2: their allow-lists, devices.allow and the
   BPF program, are set already), so every device
   QEMU opens from its first instruction on is checked;
2. a private mount namespace (nothing propagates back to the host), and in it a fresh
   tmpfs on /dev with only the nodes the spec lists (copied from the host's: same
   major/minor; the ones only QEMU uses, such as /dev/kvm and /dev/net/tun, owned by
   QEMU's user);
3. drop to QEMU's uid/gid with no supplementary groups, and no_new_privs;
4. exec QEMU. -sandbox (seccomp) is QEMU's own, set up by QEMU before the guest runs;
   QEMU's own -run-with user= cannot be used with elevateprivileges=deny (the seccomp
   filter is in force before QEMU's setuid, which then kills it), hence this helper.

SPEC is JSON: {"uid", "gid", "devices": [[path, owned_by_qemu], ...], "cgroups": [paths
of cgroup.procs: v1 devices, v2], "stderr": path}. With "stderr" the jail daemonizes QEMU itself: a
child in a session of its own, stdio on /dev/null and that file, and prints its pid.
QEMU's own -daemonize cannot be used under -sandbox: spawn=deny forbids its fork and
elevateprivileges=deny its setsid (measured: QEMU 10.0 exits 1 at once). Errors go to
stderr with exit status 111, which QemuProcess shows.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import stat
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x8, 0x4000, 0x40000
PR_SET_NO_NEW_PRIVS = 38
EXIT_JAIL = 111


def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def private_dev(libc: Any, devices: list[tuple[str, bool]], uid: int, gid: int) -> None:
    """Unshare the mount namespace and put a tmpfs holding only `devices` on /dev."""
    nodes = []
    for path, owned in devices:
        st = os.stat(path)  # the host's node, looked at before /dev is covered
        if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise OSError(0, f"{path} is not a device node")
        nodes.append((path, st, owned))
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None),
           "making / private")
    _check(libc.mount(b"xenia-dev", b"/dev", b"tmpfs", MS_NOSUID | MS_NOEXEC,
                      b"mode=0755,size=64k"), "mounting a tmpfs on /dev")
    for path, st, owned in nodes:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        mode = stat.S_IFMT(st.st_mode) | (0o600 if owned else stat.S_IMODE(st.st_mode))
        os.mknod(path, mode, st.st_rdev)
        os.chmod(path, stat.S_IMODE(mode))  # mknod's mode is cut by the umask
        if owned:
            os.chown(path, uid, gid)


def add_node(libc: Any, pid: int, path: str, uid: int, gid: int) -> None:
    """Put host node `path` into the private /dev of running QEMU `pid` (a hot-plugged
    block device): enter its mount namespace, then mknod there."""
    st = os.stat(path)
    if not stat.S_ISBLK(st.st_mode):
        raise OSError(0, f"{path} is not a block device")
    fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(libc.setns(fd, CLONE_NEWNS), "entering QEMU's mount namespace")
    finally:
        os.close(fd)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    if not os.path.exists(path):
        os.mknod(path, stat.S_IFBLK | 0o600, st.st_rdev)
    os.chown(path, uid, gid)


def remove_node(libc: Any, pid: int, path: str) -> None:
    """Take block device `path` out of the private /dev of running QEMU `pid` (a detached
    disk, an ejected medium): enter its mount namespace, then unlink it there (and the
    directories add_node made for it, if empty). The host's node is never touched: this
    process is in QEMU's namespace before it looks."""
    fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(libc.setns(fd, CLONE_NEWNS), "entering QEMU's mount namespace")
    finally:
        os.close(fd)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return  # gone already (a retried give-back)
    if not stat.S_ISBLK(st.st_mode):
        raise OSError(0, f"{path} in QEMU's /dev is not a block device")
    os.unlink(path)
    parent = os.path.dirname(path)
    while parent.startswith("/dev/") and parent != "/dev":
        try:
            os.rmdir(parent)
        except OSError:
            break  # not empty: another node is in it
        parent = os.path.dirname(parent)


def main(argv: list[str]) -> int:
    if len(argv) == 5 and argv[0] == "--add-node":
        # --add-node PID PATH UID:GID -- from xeniad, for a hot-plugged block device.
        uid, gid = (int(x) for x in argv[3].split(":"))
        try:
            add_node(_libc(), int(argv[1]), argv[2], uid, gid)
        except OSError as e:
            print(f"xenia jail: {e}", file=sys.stderr)
            return EXIT_JAIL
        return 0
    if len(argv) == 4 and argv[0] == "--remove-node":
        # --remove-node PID PATH -- from xeniad, for a detached block device.
        try:
            remove_node(_libc(), int(argv[1]), argv[2])
        except OSError as e:
            print(f"xenia jail: {e}", file=sys.stderr)
            return EXIT_JAIL
        return 0
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m xenia.qemu.jail SPEC -- QEMU ARGS...", file=sys.stderr)
        return 2
    spec = json.loads(argv[0])
    qemu = argv[2:]
    uid, gid = int(spec["uid"]), int(spec["gid"])
    if uid == 0 or gid == 0:
        print("xenia jail: refusing to run QEMU as root", file=sys.stderr)
        return EXIT_JAIL
    libc = _libc()
    try:
        for procs in spec.get("cgroups") or []:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        private_dev(libc, [(str(p), bool(o)) for p, o in spec["devices"]], uid, gid)
        if spec.get("stderr"):
            err = os.open(spec["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND
                          | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            pid = os.fork()
            if pid:
                print(pid, flush=True)
                os._exit(0)
            os.setsid()
            null = os.open("/dev/null", os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os.dup2(err, 2)
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        os.execv(qemu[0], qemu)
    except OSError as e:
        print(f"xenia jail: {e}", file=sys.stderr)
        return EXIT_JAIL
    return EXIT_JAIL  # not reached: execv returns only by raising


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
