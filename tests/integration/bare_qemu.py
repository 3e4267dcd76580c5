"""A bare QEMU guest for the image tests: no Xenia in between, just QEMU, its serial
console (always drained: a console nobody reads stalls the guest) and QMP."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from xenia.images.tiny import READY_LINE

QEMU = "qemu-system-x86_64"


class BareGuest:
    """One bare QEMU process: console over a socket (always drained, logged), QMP over JSON.

    `args` are the machine's own arguments (machine, CPUs, kernel or firmware, disks);
    the console, the QMP socket and the no-defaults basics are added here.
    """

    def __init__(self, workdir: Path, args: list[str],
                 ready_timeout: float = 60.0) -> None:
        self.workdir = workdir
        self.ready_timeout = ready_timeout
        self.console_log = workdir / "console.log"
        self.qemu_log = workdir / "qemu.log"
        con, qmp = workdir / "con.sock", workdir / "qmp.sock"
        argv = [
            QEMU, "-accel", "tcg", "-m", "256",
            "-nodefaults", "-no-user-config", "-display", "none",
            "-chardev", f"socket,id=s0,path={con},server=on,wait=off,logfile={self.console_log}",
            "-serial", "chardev:s0",
            "-qmp", f"unix:{qmp},server=on,wait=off",
            *args,
        ]  # fmt: skip
        self.started = time.monotonic()
        with open(self.qemu_log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self._buf = b""
        self._con_closed = False
        self._cond = threading.Condition()
        self._con = self._connect(con)
        # A connected console nobody reads stalls the guest's serial output (the kernel waits
        # for the UART), so a thread drains it all the time.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._qmp = self._connect(qmp)
        self._qmp_file = self._qmp.makefile("rwb")
        self.events: list[dict[str, Any]] = []
        self._qmp_file.readline()  # greeting
        self.qmp("qmp_capabilities")
        self._seq = 0

    def _connect(self, path: Path) -> socket.socket:
        deadline = time.monotonic() + 10
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(path))
                return s
            except OSError as e:
                s.close()
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"QEMU did not start: {self.qemu_log.read_text()}") from e
                time.sleep(0.01)

    def _read(self) -> None:
        while True:
            try:
                data = self._con.recv(65536)
            except OSError:
                data = b""
            with self._cond:
                if not data:
                    self._con_closed = True
                    self._cond.notify_all()
                    return
                self._buf += data
                self._cond.notify_all()

    def console_text(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self) -> float:
        """Seconds from QEMU start to the ready line."""
        deadline = self.started + self.ready_timeout
        while time.monotonic() < deadline:
            if READY_LINE in self.console_text():
                return time.monotonic() - self.started
            assert self.proc.poll() is None, f"QEMU exited: {self.qemu_log.read_text()}"
            time.sleep(0.01)
        raise AssertionError(f"no {READY_LINE!r} within {self.ready_timeout} s")

    def run(self, command: str, timeout: float = 20.0) -> str:
        """Run a shell command on the serial console; return its output (CRLF -> LF).

        The markers are quoted in the command so the tty's echo of it never matches.
        """
        self._seq += 1
        begin, end = f"XENIA-BEGIN-{self._seq}", f"XENIA-END-{self._seq}"
        line = f'echo "{begin[:5]}""{begin[5:]}"; {command}; echo "{end[:5]}""{end[5:]}-$?"\n'
        with self._cond:
            start = len(self._buf)
        self._con.sendall(line.encode())
        pattern = re.compile(re.escape(begin.encode()) + rb"\r?\n(.*?)" + re.escape(end.encode())
                             + rb"-(\d+)\r?\n", re.S)  # fmt: skip
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (m := pattern.search(self._buf, start)):
                left = deadline - time.monotonic()
                assert left > 0, f"no output from {command!r} within {timeout} s"
                self._cond.wait(left)
        out = m.group(1).decode(errors="replace").replace("\r\n", "\n")
        assert m.group(2) == b"0", f"{command!r} failed ({int(m.group(2))}): {out}"
        return out

    def qmp(self, command: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self._qmp_file.write(json.dumps(msg).encode() + b"\n")
        self._qmp_file.flush()
        while True:
            reply = json.loads(self._qmp_file.readline())
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise AssertionError(f"QMP {command}: {reply['error']}")
            return reply["return"]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for s in (self._con, self._qmp):
            s.close()


@contextlib.contextmanager
def bare_guests(prefix: str, ready_timeout: float
                ) -> Iterator[Callable[[Callable[[Path], list[str]]], BareGuest]]:
    """start(args_for) -> a BareGuest in a directory of its own; `args_for(directory)`
    gives its QEMU arguments (and may put files there first). At the end every QEMU is
    killed, pass or fail, and its console and log printed (pytest shows them only when
    the test failed)."""
    guests: list[BareGuest] = []
    # Short, private directory: socket paths must stay under 108 bytes.
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))

    def start(args_for: Callable[[Path], list[str]]) -> BareGuest:
        d = workdir / str(len(guests))
        d.mkdir()
        guest = BareGuest(d, args_for(d), ready_timeout=ready_timeout)
        guests.append(guest)
        return guest

    try:
        yield start
    finally:
        for g in guests:
            g.kill()
        for g in guests:
            print(f"===== console of guest in {g.workdir} =====\n{g.console_text()}")
            print(f"===== QEMU log =====\n{g.qemu_log.read_text(errors='replace')}")
        shutil.rmtree(workdir, ignore_errors=True)
