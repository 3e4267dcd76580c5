"""QemuProcess: the one owner of a QEMU process — launch, adopt, watch, stop, clean up.

QEMU is started with -daemonize: the launching call returns only once QEMU has set up its
devices and sockets (or failed, with its error on stderr), and the running QEMU is never
our child. So a domain outlives xeniad, and a restarted xeniad adopts it the same way it
watches one it started: through its pidfile and a pidfd.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from xenia.errors import BackendError
from xenia.hostos.peercred import Peer, check_peer
from xenia.hostos.procfs import (
    PidWatch,
    cmdline,
    log_tail,
    process_cpu_seconds,
    read_pid,
    thread_demand,
    thread_states,
)
from xenia.qemu.cmdline import RunFiles
from xenia.qemu.commands import Qmp
from xenia.qemu.qmp import EventHandler, QMPSession

log = logging.getLogger(__name__)

LAUNCH_TIMEOUT = 60.0


async def _greets(path: Path, check: Callable[[socket.socket], None]) -> bool:
    """True if a QMP server at `path` sends its greeting within a second. `check` sees
    the socket first (it raises BackendError if the listener is not the domain's QEMU)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 1.0)
    except (OSError, TimeoutError):
        return False
    try:
        check(writer.get_extra_info("socket"))
        line = await asyncio.wait_for(reader.readline(), 1.0)
        return line.startswith(b'{"QMP"')
    except (OSError, TimeoutError, ValueError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def pid_matches(pid: int, uuid: str) -> bool:
    """True if `pid` is alive and is the QEMU of domain `uuid` (guards against pid reuse)."""
    argv = cmdline(pid)
    return "-uuid" in argv and uuid in argv


class QemuProcess:
    """A QEMU process for one domain, identified by the domain's UUID."""

    def __init__(self, name: str, uuid: str, files: RunFiles, uid: int = 0) -> None:
        self.name = name
        self.uuid = uuid
        self.files = files
        self.uid = uid  # QEMU's: the one listener its run dir's sockets may lead to
        self.pid: int | None = None
        self._session: QMPSession | None = None
        self.qmp = Qmp(self)  # the typed commands, over this process's session
        self._watch: PidWatch | None = None
        self._exited = asyncio.Event()
        self._on_exit: Callable[[], None] | None = None

    # -- start / adopt -------------------------------------------------------------------
    async def launch(self, argv: list[str], jailed: bool = False,
                     pass_fds: Sequence[int] = ()) -> None:
        """Run QEMU (-daemonize, or through qemu/jail.py with `jailed`) and return once
        it is up, paused, with QMP listening. `pass_fds` are inherited by QEMU (the jail
        keeps them open across its fork and exec)."""
        self.files.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.files.dir, 0o700)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                pass_fds=tuple(pass_fds),
            )
        except OSError as e:
            raise BackendError(f"Failed to start QEMU for {self.name}: {e}") from e
        try:
            out, err = await asyncio.wait_for(proc.communicate(), LAUNCH_TIMEOUT)
        except TimeoutError as e:
            proc.kill()
            raise BackendError(
                f"Failed to start QEMU for {self.name}: no answer in {LAUNCH_TIMEOUT:.0f} s"
            ) from e
        if proc.returncode != 0:
            msg = (err.decode(errors="replace").strip() or log_tail(self.files.qemu_log)
                   or f"exit status {proc.returncode}")
            raise BackendError(f"Failed to start QEMU for {self.name}: {msg}")
        if jailed:
            try:
                child = int(out.decode().strip())
            except ValueError:
                raise BackendError(f"Failed to start QEMU for {self.name}: the jail "
                                   f"answered {out[:80]!r}") from None
            self._start_watching(child)
            await self._wait_ready()
            return
        pid = read_pid(self.files.pidfile)
        if pid is None:
            raise BackendError(f"Failed to start QEMU for {self.name}: no pidfile written")
        self._start_watching(pid)

    async def _wait_ready(self) -> None:
        """Until QEMU's QMP greets (its machine is built: -daemonize's moment), or it
        exited (its error is on its stderr file)."""
        deadline = asyncio.get_running_loop().time() + LAUNCH_TIMEOUT
        while True:
            if await self.wait_exit(0.02):
                msg = (log_tail(self.files.stderr) or log_tail(self.files.qemu_log)
                       or "it exited at once")
                raise BackendError(f"Failed to start QEMU for {self.name}: {msg}")
            if self.files.qmp.exists() and await _greets(self.files.qmp, self._check_qmp):
                return
            if asyncio.get_running_loop().time() > deadline:
                raise BackendError(f"Failed to start QEMU for {self.name}: no QMP greeting "
                                   f"in {LAUNCH_TIMEOUT:.0f} s")

    def adopt(self) -> bool:
        """Take over a QEMU started earlier (maybe by another xeniad). False if it is gone."""
        pid = read_pid(self.files.pidfile)
        if pid is None or not pid_matches(pid, self.uuid):
            return False
        try:
            self._start_watching(pid)
        except ProcessLookupError:
            return False
        return True

    def _start_watching(self, pid: int) -> None:
        self.pid = pid
        self._watch = PidWatch(pid, self._exit_seen)

    def _exit_seen(self) -> None:
        self._watch = None
        self._exited.set()
        if self._on_exit is not None:
            self._on_exit()

    def on_exit(self, callback: Callable[[], None]) -> None:
        self._on_exit = callback

    @property
    def alive(self) -> bool:
        return self.pid is not None and not self._exited.is_set()

    def check_peer(self, sock: socket.socket, what: str) -> None:
        """Refuse `sock` (closed, BackendError) unless this QEMU listens on its other end:
        its run dir is its own, so any socket path there may be a link elsewhere."""
        check_peer(sock, Peer(self.uid, self.pid), f"the {what} of '{self.name}'")

    def _check_qmp(self, sock: socket.socket) -> None:
        self.check_peer(sock, f"QMP socket {self.files.qmp}")

    async def connect_qmp(self, on_event: EventHandler | None = None) -> None:
        session = QMPSession(self.name, self.files.qmp, self._check_qmp)
        await session.connect(on_event)
        self._session = session

    async def command(self, cmd: str, args: dict[str, Any] | None = None,
                      timeout: float = 30.0) -> Any:
        """The QMP transport of `self.qmp` (qemu/commands.py); nobody else calls it."""
        if self._session is None:
            raise BackendError(f"Failed {cmd} on {self.name}: no QMP connection")
        return await self._session.execute(cmd, args, timeout)

    def send_fd(self, fd: int) -> None:
        """The fd-passing half of `self.qmp.getfd`."""
        if self._session is None:
            raise BackendError(f"Failed to pass a file to {self.name}: no QMP connection")
        self._session.send_fd(fd)

    # -- stop ----------------------------------------------------------------------------
    async def wait_exit(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._exited.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def kill(self, grace: float = 5.0) -> None:
        """Stop QEMU now: QMP quit, then SIGTERM, then SIGKILL (xl destroy semantics)."""
        if not self.alive:
            return
        if self._session is not None:
            with contextlib.suppress(BackendError):
                await self.qmp.quit(timeout=grace)
            if await self.wait_exit(grace):
                return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.pid is None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            if await self.wait_exit(grace):
                return
        raise BackendError(f"Failed to stop QEMU of {self.name} (pid {self.pid})")

    async def close(self) -> None:
        """Drop our handles (QMP, pidfd) without touching the process."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def remove_files(self) -> None:
        shutil.rmtree(self.files.dir, ignore_errors=True)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the QEMU process."""
        return 0.0 if self.pid is None else process_cpu_seconds(self.pid)

    def vcpu_threads(self) -> dict[int, tuple[int, str]]:
        """vCPU index -> (thread id, state letter) from the thread names QEMU sets."""
        threads: dict[int, tuple[int, str]] = {}
        if self.pid is None:
            return threads
        for tid, (name, state) in thread_states(self.pid).items():
            # debug-threads=on names them "CPU 0/TCG" or "CPU 0/KVM".
            if name.startswith("CPU ") and "/" in name:
                with contextlib.suppress(ValueError):
                    threads[int(name[4:].split("/")[0])] = (tid, state)
        return threads

    def vcpu_demand(self) -> float:
        """Seconds the vCPU threads ran on a host CPU or waited in a run queue for one: what
        the guest asked of the host, whether it got it or not (a vCPU starved on a busy
        host still asks; a halted one does not)."""
        if self.pid is None:
            return 0.0
        return sum(thread_demand(self.pid, tid) for tid, _ in self.vcpu_threads().values())
