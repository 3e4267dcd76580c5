"""The guest console from the CLI: attach (terminal or pipes), run one command, follow the log.

The console is QEMU's serial port, a UNIX socket in the domain's run directory. QEMU takes
one client at a time, as xl's console does.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import select
import socket
import sys
import termios
import time
import tty
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from xenia.errors import BackendError, InvalidConfig
from xenia.hostos.peercred import Peer, check_peer
from xenia.hostos.procfs import open_nofollow

ESCAPE = b"\x1d"  # Ctrl-], as xl console


def peer_of_view(d: dict[str, Any]) -> Peer | None:
    """The listener a domain's console must have, from its view ("console_peer")."""
    peer = d.get("console_peer")
    return Peer(peer[0], peer[1]) if peer else None


def connect(path: Path, timeout: float = 10.0, peer: Peer | None = None) -> socket.socket:
    """Connect to the console at `path`; with `peer`, refuse another listener (the
    directory is QEMU's: it can make the path a link to another domain's console)."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            if peer is not None:
                check_peer(sock, peer, f"the console at {path}")
            return sock
        except OSError as e:
            sock.close()
            if time.monotonic() > deadline:
                raise BackendError(f"Failed to attach to the console at {path}: {e}") from e
            time.sleep(0.1)


def escape_char(text: str) -> bytes:
    """xl console -e: "^]" (a control character) or one plain character."""
    if len(text) == 2 and text[0] == "^" and 0x40 <= ord(text[1].upper()) <= 0x5F:
        return bytes([ord(text[1].upper()) - 0x40])
    if len(text) == 1 and ord(text) < 0x80:
        return text.encode()
    raise InvalidConfig(f"Failed to attach the console: bad escape character '{text}' (use "
                        "^X for Ctrl-X, or one character)")


def attach(path: Path, linger: float = 2.0, escape: bytes = ESCAPE,
           peer: Peer | None = None) -> None:
    """Copy between the console and stdin/stdout until Ctrl-] or the guest goes away.

    On a terminal, stdin is put in raw mode. On pipes, end of input does not end the
    session at once: output is still shown until the console has been quiet for `linger`
    seconds, so `echo cmd | xenia console dom` prints the command's answer.
    """
    attach_socket(connect(path, peer=peer), linger, escape)


def attach_socket(sock: socket.socket, linger: float = 2.0, escape: bytes = ESCAPE) -> None:
    """attach() on a connected stream socket (closed on return): the console's own, or
    one end of the relay of another cluster member's (cli/remote_console.py)."""
    stdin = sys.stdin.buffer
    stdout = sys.stdout.buffer
    fd_in = stdin.fileno()
    is_tty = os.isatty(fd_in)
    saved = termios.tcgetattr(fd_in) if is_tty else None
    if is_tty:
        # TCSANOW, not setraw's default TCSAFLUSH: keystrokes typed before raw mode took
        # effect must reach the guest, not be discarded. Announce only once it holds.
        tty.setraw(fd_in, termios.TCSANOW)
        print("Connected to the console; Ctrl-] detaches.\r", file=sys.stderr)
    stdin_open = True
    try:
        while True:
            rlist = [sock] + ([fd_in] if stdin_open else [])
            ready, _, _ = select.select(rlist, [], [], None if stdin_open else linger)
            if not ready:
                return  # quiet for `linger` after input ended
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    return
                stdout.write(data)
                stdout.flush()
            if fd_in in ready:
                data = os.read(fd_in, 4096)
                if not data:
                    stdin_open = False
                    continue
                if escape in data:
                    before = data.split(escape, 1)[0]
                    if before:
                        sock.sendall(before)
                    return
                sock.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(fd_in, termios.TCSADRAIN, saved)
            print("", file=sys.stderr)
        sock.close()


def run(path: Path, command: str, timeout: float = 60.0,
        peer: Peer | None = None) -> tuple[str, int]:
    """Run one shell command on the console; return its output and exit status.

    Needs a shell on the console (the tiny image has one). The markers are typed with an
    empty quote inside them so the terminal's echo of the typed line never matches.
    """
    nonce = secrets.token_hex(4)
    begin, end = f"__XENIA_BEGIN_{nonce}__", f"__XENIA_END_{nonce}__"
    typed_begin = begin[:9] + '""' + begin[9:]
    typed_end = end[:9] + '""' + end[9:]
    # A command that ends in "&" runs in the background: "&;" would be a syntax error.
    command = command.strip()
    sep = " " if command.endswith("&") else "; "
    line = f"echo {typed_begin}; {command}{sep}echo {typed_end} $?\n"
    sock = connect(path, peer=peer)
    buf = b""
    try:
        sock.sendall(line.encode())
        deadline = time.monotonic() + timeout
        pattern = re.compile(
            re.escape(begin).encode() + rb"\r?\n(.*?)" + re.escape(end).encode() + rb" (\d+)",
            re.S,
        )
        while True:
            m = pattern.search(buf)
            if m:
                text = m.group(1).decode(errors="replace").replace("\r\n", "\n")
                return text, int(m.group(2))
            left = deadline - time.monotonic()
            if left <= 0:
                raise BackendError(
                    f"Failed to run '{command}' on the console: no answer in {timeout:.0f} s"
                )
            ready, _, _ = select.select([sock], [], [], left)
            if ready:
                data = sock.recv(65536)
                if not data:
                    raise BackendError(f"Failed to run '{command}': the console closed")
                buf += data
    finally:
        sock.close()


def _open_log(log: Path) -> BinaryIO:
    """The console log, never through a link (QEMU owns its directory and could make it
    one to another domain's log, or to /etc/shadow) and only a regular file."""
    try:
        fd, _ = open_nofollow(log)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        raise BackendError(f"Failed to read the console log {log}: not a regular file; "
                           "destroy and recreate the domain if its QEMU replaced it") from e
    return os.fdopen(fd, "rb")


def follow(log: Path, until: str | None, timeout: float, out: TextIO | None = None) -> bool:
    """Print the console log (from its start) until `until` appears; False on timeout."""
    out = out or sys.stdout
    deadline = time.monotonic() + timeout
    seen = b""
    pos = 0
    while True:
        with contextlib.suppress(FileNotFoundError):
            with _open_log(log) as f:
                f.seek(pos)
                chunk = f.read()
                pos += len(chunk)
                if chunk:
                    out.write(chunk.decode(errors="replace").replace("\r\n", "\n"))
                    out.flush()
                    seen += chunk
        if until is None:
            return True
        if until.encode() in seen:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
