"""Who is on the other end of a UNIX socket xeniad connected to (SO_PEERCRED).

A confined QEMU owns its run directory, and with it the paths of the sockets it listens
on there (qmp.sock, console.sock, channels, serial ports). It can replace one with a
symlink to another domain's socket; xeniad connects by path as root and would then talk
to that other QEMU. So every connect to a socket in a run directory is followed by
`check_peer`: the listener must be the domain's own QEMU (its uid, and its pid when
known), or the connection is closed and refused.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Mapping
from typing import Any, NamedTuple

from xenia.errors import BackendError

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class Peer(NamedTuple):
    """Whom a domain's sockets must lead to: its QEMU's uid, and its pid if known."""

    uid: int
    pid: int | None = None


def qemu_peer(runtime: Mapping[str, Any]) -> Peer:
    """The expected listener of a QEMU domain's sockets, from its record's runtime: the
    confined QEMU's uid; uid 0 for a QEMU an older Xenia started as root (no
    `confinement`)."""
    conf = runtime.get("confinement") or {}
    uid = conf.get("uid") if isinstance(conf, Mapping) else None
    pid = runtime.get("pid")
    return Peer(uid if isinstance(uid, int) else 0, pid if isinstance(pid, int) else None)


def peer_of(sock: Any) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that listens on the other end of `sock`."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def _close(sock: Any) -> None:
    # An asyncio transport's socket (TransportSocket) has no close(): its caller closes
    # the stream writer.
    if isinstance(sock, socket.socket):
        sock.close()


def check_peer(sock: Any, expected: Peer, what: str) -> None:
    """Refuse (close `sock`, raise BackendError) unless the peer of `sock` is `expected`.
    `what` names the domain and the socket ("the console of 'web' at /run/...").
    `sock` is a socket.socket or an asyncio transport's socket."""
    try:
        pid, uid, _ = peer_of(sock)
    except OSError as e:
        _close(sock)
        raise BackendError(f"Failed to check who listens on {what}: {e}") from e
    if uid != expected.uid or (expected.pid is not None and pid != expected.pid):
        _close(sock)
        want = f"uid {expected.uid}" + (
            f", pid {expected.pid}" if expected.pid is not None else "")
        raise BackendError(
            f"Failed to connect to {what}: its listener is uid {uid} (pid {pid}), not the "
            f"domain's QEMU ({want}); the socket was replaced, maybe by a link to another "
            "domain's. Refused; destroy the domain if its guest may be hostile")


def check_stream(writer: asyncio.StreamWriter, expected: Peer, what: str) -> None:
    """check_peer on an asyncio stream's socket; the stream is closed if refused."""
    try:
        check_peer(writer.get_extra_info("socket"), expected, what)
    except BackendError:
        writer.close()
        raise
