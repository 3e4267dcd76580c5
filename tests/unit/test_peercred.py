"""SO_PEERCRED checks (hostos/peercred.py) against real listeners: one bound by a child
that dropped to another uid, as a confined QEMU listens on its run dir's sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from xenia.cli import console as con
from xenia.errors import BackendError
from xenia.hostos.peercred import Peer, check_peer, check_stream, peer_of, qemu_peer
from xenia.qemu.qmp import QMPSession

OTHER_UID = 61917  # no user's; the child drops to it before listen() (SO_PEERCRED's moment)

# Listens on argv[1] as uid argv[2]; with argv[3] == "qmp", speaks enough QMP for
# qemu.qmp's handshake and writes what it received to stdout when the client leaves.
_SERVER = r"""
import os, socket, sys
path, uid, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
s.listen(4)
print("ready", flush=True)
got = b""
while True:
    c, _ = s.accept()
    if mode == "qmp":
        c.sendall(b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 0, "major": 10}, '
                  b'"package": ""}, "capabilities": []}}\r\n')
    while True:
        data = c.recv(4096)
        if not data:
            break
        got += data
        if mode == "qmp":  # (qemu.qmp ends a command without a newline)
            c.sendall(b'{"return": {}}\r\n')
    c.close()
    sys.stdout.write(repr(got) + "\n"); sys.stdout.flush()
"""


def _serve(path: Path, uid: int, mode: str = "plain") -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(path), str(uid), mode],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.fixture
def other(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A listener of uid OTHER_UID (a plain one: it reads and counts)."""
    path = tmp_path / "console.sock"
    proc = _serve(path, OTHER_UID)
    yield path, proc
    proc.kill()
    proc.wait()


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    return sock


def test_socketpair_peer_is_this_process() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert peer_of(a)[:2] == (os.getpid(), os.getuid())
        check_peer(a, Peer(os.getuid(), os.getpid()), "a pair")  # no error
        assert a.fileno() != -1


def test_listener_of_the_expected_uid_and_pid_is_accepted(other: tuple[Path, subprocess.Popen[str]]
                                                          ) -> None:
    path, proc = other
    sock = _connect(path)
    with sock:
        check_peer(sock, Peer(OTHER_UID, proc.pid), "the console of 'a'")
        check_peer(sock, Peer(OTHER_UID), "the console of 'a'")  # pid unknown: uid only
        assert sock.fileno() != -1


def test_listener_of_another_uid_is_refused_and_closed(
        other: tuple[Path, subprocess.Popen[str]]) -> None:
    path, proc = other
    sock = _connect(path)
    with pytest.raises(BackendError) as e:
        check_peer(sock, Peer(4242, None), "the console of 'a' at X")
    assert "the console of 'a' at X" in e.value.message
    assert f"uid {OTHER_UID}" in e.value.message and "uid 4242" in e.value.message
    assert sock.fileno() == -1  # closed: nothing can be sent to the wrong QEMU


def test_listener_of_the_right_uid_but_another_pid_is_refused(
        other: tuple[Path, subprocess.Popen[str]]) -> None:
    path, proc = other
    sock = _connect(path)
    with pytest.raises(BackendError) as e:
        check_peer(sock, Peer(OTHER_UID, proc.pid + 100000), "the console of 'a'")
    assert f"pid {proc.pid})" in e.value.message
    assert sock.fileno() == -1


def test_qemu_peer_from_the_record() -> None:
    assert qemu_peer({"confinement": {"uid": 70001, "gid": 5}, "pid": 99}) == Peer(70001, 99)
    # A QEMU an older Xenia started as root: root only.
    assert qemu_peer({"pid": 7}) == Peer(0, 7)
    assert qemu_peer({}) == Peer(0, None)


def test_cli_console_refuses_another_listener_and_sends_nothing(
        other: tuple[Path, subprocess.Popen[str]]) -> None:
    path, proc = other
    with pytest.raises(BackendError, match=f"uid {OTHER_UID}"):
        con.run(path, "cat /etc/shadow", timeout=5, peer=Peer(4242, None))
    proc.kill()
    out, _ = proc.communicate()
    assert out.strip() in ("", "b''")  # the command never reached that console


def test_cli_console_connects_to_the_expected_listener(
        other: tuple[Path, subprocess.Popen[str]]) -> None:
    path, proc = other
    sock = con.connect(path, peer=Peer(OTHER_UID, proc.pid))
    with sock:
        sock.sendall(b"hello\n")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == repr(b"hello\n")


def test_console_view_peer() -> None:
    assert con.peer_of_view({"console_peer": [70001, 12]}) == Peer(70001, 12)
    assert con.peer_of_view({"console_peer": None}) is None


@pytest.fixture
def qmp_server(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    path = tmp_path / "qmp.sock"
    proc = _serve(path, OTHER_UID, "qmp")
    yield path, proc
    proc.kill()
    proc.wait()


def test_qmp_session_refuses_a_listener_of_another_uid(
        qmp_server: tuple[Path, subprocess.Popen[str]]) -> None:
    path, proc = qmp_server

    def check(sock: socket.socket) -> None:
        check_peer(sock, Peer(4242, None), f"the QMP socket {path} of 'a'")

    session = QMPSession("a", path, check)
    with pytest.raises(BackendError) as e:
        asyncio.run(session.connect())
    assert f"uid {OTHER_UID}" in e.value.message and "uid 4242" in e.value.message
    proc.kill()
    out, _ = proc.communicate()
    assert "qmp_capabilities" not in out  # refused before the handshake's first command


def test_qmp_session_accepts_its_own_qemu(
        qmp_server: tuple[Path, subprocess.Popen[str]]) -> None:
    path, proc = qmp_server

    def check(sock: socket.socket) -> None:
        check_peer(sock, Peer(OTHER_UID, proc.pid), "the QMP socket")

    async def go() -> None:
        session = QMPSession("a", path, check)
        await session.connect()
        await session.close()

    asyncio.run(go())
    assert proc.stdout is not None
    assert "qmp_capabilities" in proc.stdout.readline()


def test_stream_of_another_listener_is_refused_and_closed(
        other: tuple[Path, subprocess.Popen[str]]) -> None:
    path, _ = other

    async def go() -> asyncio.StreamWriter:
        _, writer = await asyncio.open_unix_connection(str(path))
        with pytest.raises(BackendError, match=f"uid {OTHER_UID}"):
            check_stream(writer, Peer(4242), "the agent channel of 'a'")
        return writer

    assert asyncio.run(go()).is_closing()
