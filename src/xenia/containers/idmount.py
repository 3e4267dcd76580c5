"""A container's root filesystem, owned by its own host ids: idmapped mounts, or a copy.

A container's root (container uid 0) is host uid U..U+65535, its own range
(containers/idmap.py), while its rootfs directory is owned by whatever built it: root
(uid 0) or a shifted tree (uid 100000, `xenia image build rootfs`). Two ways to make the
files the container's:

- an idmapped mount (Linux >= 5.12; as an overlay's lower layer >= 5.19): the monitor
  (monitor.py) clones the rootfs directory as a detached mount, attaches to it a user
  namespace mapping the tree's ids to the container's, and uses that mount as the
  overlay's lower layer. Nothing is copied or changed on disk, and the copy-ups land in the
  domain's upper directory owned by the container's ids. `idmapped_lower`;
- a copy with shifted ownership, where the kernel or the filesystem cannot idmap
  (`shifted_copy`): made once per domain in its run directory, gone with it.

`probe` tells which one works for a directory: it builds the whole thing (idmapped clone
and an overlay on top) in a throwaway mount namespace. It and `userns_fd` fork, so they
run in single-threaded processes only: the monitor, or `python -m
xenia.containers.idmount probe DIR` (what xeniad runs, once a filesystem).

Only the standard library: the monitor imports it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_NODEV = 4
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = 0o2000000
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_IDMAP = 0x00100000
NOBODY = 65534  # what an id outside the tree's range becomes in a shifted copy

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def map_line(inside: int, outside: int, size: int) -> str:
    """One uid_map/gid_map line: ids inside..inside+size-1 are outside.. on the host."""
    return f"{inside} {outside} {size}\n"


def userns_fd(uid_map: str, gid_map: str) -> int:
    """An fd of a new user namespace with these maps (no process stays in it)."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child only enters the namespace and waits to be let go
        try:
            os.close(ready_r)
            os.close(done_w)
            ok = _libc.unshare(CLONE_NEWUSER) == 0
            os.write(ready_w, b"1" if ok else b"0")
            os.read(done_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise OSError(errno.EPERM, "unshare(CLONE_NEWUSER) failed in the helper")
        for name, text in (("uid_map", uid_map), ("gid_map", gid_map)):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(text)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(done_w)
        os.waitpid(pid, 0)


def idmapped_clone(src: str, ns_fd: int) -> int:
    """A detached, read-only, nodev clone of the mount at `src` whose ids are
    seen through user namespace `ns_fd`; returns its fd (move_mount it somewhere)."""
    tree = _check(_libc.syscall(SYS_OPEN_TREE, AT_FDCWD, src.encode(),
                                OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC), f"open_tree {src}")
    try:
        attr = _MountAttr(MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV, 0, 0, ns_fd)
        _check(_libc.syscall(SYS_MOUNT_SETATTR, tree, b"", AT_EMPTY_PATH, ctypes.byref(attr),
                             ctypes.sizeof(attr)), f"idmap the mount of {src}")
    except BaseException:
        os.close(tree)
        raise
    return tree


def idmapped_lower(src: str, target: str, uid_map: str, gid_map: str) -> None:
    """Mount `src` at `target` (an existing directory) with its ids mapped: a file of
    `src` owned by id I (inside of a map line) shows as owned by the host id it maps to."""
    ns = userns_fd(uid_map, gid_map)
    try:
        tree = idmapped_clone(src, ns)
    finally:
        os.close(ns)
    try:
        _check(_libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, target.encode(),
                             MOVE_MOUNT_F_EMPTY_PATH), f"move the idmapped mount to {target}")
    finally:
        os.close(tree)


def probe(src: str) -> None:
    """Build an overlay on an idmapped clone of `src` in a mount namespace of this
    process's own (which it then stays in: run it in a process of its own). OSError if
    the kernel or the filesystem cannot."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    base = tempfile.mkdtemp(prefix="xenia-idmap-probe-")
    try:
        _check(_libc.mount(b"tmpfs", base.encode(), b"tmpfs", MS_NODEV, b"size=64k"),
               "mount a tmpfs")
        parts = {p: os.path.join(base, p) for p in ("lower", "upper", "work", "merged")}
        for path in parts.values():
            os.mkdir(path)
        st = os.stat(src)
        idmapped_lower(src, parts["lower"], map_line(st.st_uid, NOBODY + 1, 1),
                       map_line(st.st_gid, NOBODY + 1, 1))
        opts = f"lowerdir={parts['lower']},upperdir={parts['upper']},workdir={parts['work']}"
        _check(_libc.mount(b"overlay", parts["merged"].encode(), b"overlay", MS_NODEV,
                           opts.encode()), "mount an overlay on the idmapped mount")
        # (Kernels before 5.19 refuse the overlay on an idmapped layer with EINVAL.)
        if os.stat(parts["lower"]).st_uid != NOBODY + 1:
            raise OSError(errno.EOPNOTSUPP, "the idmapped mount does not show the mapped "
                          "owner")
    finally:
        _libc.umount2(base.encode(), 2)  # MNT_DETACH: the namespace goes with us anyway
        os.rmdir(base)


# -- the fallback: a copy ---------------------------------------------------------------------
def shift(value: int, src: int, dst: int, size: int) -> int:
    """Host id of a copied file's id `value`, for a tree whose ids src.. become dst..;
    an id outside the tree's range becomes the container's nobody (or its last id)."""
    if src <= value < src + size:
        return dst + value - src
    return dst + min(NOBODY, size - 1)


def _own(path: Path, st: os.stat_result, uids: tuple[int, int], gids: tuple[int, int],
         size: int) -> None:
    """Give `path` (whose stat was `st`) the shifted owner, keeping its mode."""
    os.lchown(path, shift(st.st_uid, uids[0], uids[1], size),
              shift(st.st_gid, gids[0], gids[1], size))
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(path, stat.S_IMODE(st.st_mode))  # chown cleared setuid/setgid


def shift_in_place(top: Path, uids: tuple[int, int], gids: tuple[int, int],
                   size: int) -> None:
    """Shift the owners of every file under `top` (itself included, symlinks not
    followed): ids src.. become dst.. as in `shifted_copy`."""
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            _own(path, path.lstat(), uids, gids, size)
    _own(top, top.lstat(), uids, gids, size)


def shifted_copy(src: Path, dst: Path, uids: tuple[int, int], gids: tuple[int, int],
                 size: int) -> None:
    """Copy tree `src` to `dst` (which must not exist) with ids shifted: (src_uid,
    dst_uid) and (src_gid, dst_gid), `size` ids each. Regular files, directories and
    symlinks, hard links kept; device nodes, fifos and sockets are left out (the container
    cannot use device nodes, and its /dev is a tmpfs)."""
    tmp = dst.with_name(dst.name + ".part")
    if tmp.exists():
        shutil.rmtree(tmp)
    links: dict[tuple[int, int], Path] = {}

    def own(path: Path, st: os.stat_result) -> None:
        _own(path, st, uids, gids, size)

    def copy(s: Path, d: Path) -> None:
        st = s.lstat()
        if stat.S_ISDIR(st.st_mode):
            d.mkdir()
            for child in sorted(os.listdir(s)):
                copy(s / child, d / child)
            own(d, st)
            os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(s), d)
            own(d, st)
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in links:
                os.link(links[key], d)
                return
            shutil.copy2(s, d, follow_symlinks=False)
            own(d, st)
            links[key] = d

    copy(src, tmp)
    os.rename(tmp, dst)


def probe_in_child(src: str, timeout: float = 30.0) -> str | None:
    """`probe` in a process of its own (this one may have threads); None if idmapped
    lower layers work for `src`, else why not."""
    try:
        res = subprocess.run([sys.executable, "-m", "xenia.containers.idmount", "probe", src],
                             capture_output=True, text=True, timeout=timeout, check=False,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"the probe did not run: {e}"
    return None if res.returncode == 0 else (res.stderr.strip() or f"exit {res.returncode}")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "probe":
        print("usage: python -m xenia.containers.idmount probe DIR", file=sys.stderr)
        return 2
    try:
        probe(argv[1])
    except OSError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
