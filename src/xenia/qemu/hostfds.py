"""Files and sockets xeniad opens for a confined QEMU, passed to it as inherited fds.

QEMU runs as xenia-qemu (qemu/confine.py) and cannot open an operator's path outside
its run directory: a `serial = ["file:/PATH"]` log or a `channel = ["...,path=/PATH"]`
socket. As libvirt does, xeniad (root) opens them itself and QEMU inherits the fds:
the file through `-add-fd` and `path=/dev/fdset/N` (QEMU's file chardev opens that
instead of a path), the socket as a listening fd (`-chardev socket,fd=N`). QEMU gets
only these fds, never rights on the paths or their directories (no chown, no ACL).

Keys of the fd map: "serial<N>" (ttySN's file), "channel<I>" (channel I's socket).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Mapping
from pathlib import Path

from xenia.config.extras import parse_channel
from xenia.config.model import DomainConfig
from xenia.errors import BackendError, InvalidConfig

HostFds = Mapping[str, int]


def open_serial_file(path: Path, fail: str) -> int:
    """Append-only fd of a serial log: created 0600 if missing, no link followed, never
    truncated."""
    if not path.is_absolute():
        raise InvalidConfig(f"{fail}: serial file '{path}' must be an absolute path")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except OSError as e:
        raise BackendError(f"{fail}: cannot open serial file '{path}': {e.strerror}; "
                           "name a plain file (not a link) in an existing directory") from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidConfig(f"{fail}: serial file '{path}' is not a plain file")
    os.set_blocking(fd, True)
    return fd


def bind_channel(path: Path, fail: str) -> int:
    """A listening UNIX socket at `path` (a stale socket there is replaced, as QEMU
    itself would; anything else is refused)."""
    if not path.is_absolute():
        raise InvalidConfig(f"{fail}: channel path '{path}' must be an absolute path")
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise InvalidConfig(f"{fail}: channel path '{path}' exists and is not a socket; "
                                "choose a free path")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        sock.listen(8)
    except OSError as e:
        sock.close()
        raise BackendError(f"{fail}: cannot listen on channel path '{path}': "
                           f"{e.strerror}") from e
    return sock.detach()


def open_host_fds(cfg: DomainConfig) -> dict[str, int]:
    """Open every serial file and channel socket of `cfg`; close_host_fds after QEMU
    started (it holds its own copies). All or nothing."""
    fail = f"Failed to create domain '{cfg.name}'"
    fds: dict[str, int] = {}
    try:
        for i, spec in enumerate(cfg.serial[1:], start=1):
            if spec.startswith("file:"):
                fds[f"serial{i}"] = open_serial_file(Path(spec[5:]), fail)
        for i, raw in enumerate(cfg.channel):
            ch = parse_channel(raw)
            if ch.path:
                fds[f"channel{i}"] = bind_channel(Path(ch.path), fail)
    except BaseException:
        close_host_fds(fds)
        raise
    return fds


def close_host_fds(fds: HostFds) -> None:
    for fd in fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)


def _identity(st: os.stat_result) -> str:
    # The inode alone may be reused at once by the next socket bound at the same path.
    return f"{st.st_dev}:{st.st_ino}:{st.st_ctime_ns}"


def bound_sockets(cfg: DomainConfig) -> dict[str, str]:
    """{path: identity} of the channel sockets just bound for `cfg`, for remove_sockets."""
    out: dict[str, str] = {}
    for c in map(parse_channel, cfg.channel):
        if c.path:
            with contextlib.suppress(OSError):
                out[c.path] = _identity(os.lstat(c.path))
    return out


def remove_sockets(bound: Mapping[str, str]) -> None:
    """When the domain ends: QEMU, given only the fds, does not unlink the sockets as it
    does a path it bound itself. Only the very socket bound is removed: a later domain
    (a rename-restart's) may have bound the same path since."""
    for path, ident in bound.items():
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if stat.S_ISSOCK(st.st_mode) and _identity(st) == ident:
                os.unlink(path)
