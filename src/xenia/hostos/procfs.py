"""Processes and threads as /proc shows them: pidfiles, liveness, argv, CPU time, logs.

One copy of what the QEMU process, the container driver and dnsmasq each need: read a
pidfile (read_pid), tell a live process from a gone or zombie one (pid_alive), check a
pid still belongs to what we started (cmdline), wait for one to go (wait_gone) or be
told when it does (PidWatch), and read per-thread statistics (thread_stats,
thread_states, process_cpu_seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from xenia.errors import BackendError, NotFound, XeniaError

_CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- pids ----------------------------------------------------------------------------------
def open_nofollow(path: Path) -> tuple[int, os.stat_result]:
    """An fd to read regular file `path` (and its fstat), never opened through a link and
    never blocking on a FIFO planted there; OSError otherwise (EINVAL: not a regular
    file). For files in a directory a confined QEMU owns (its run dir)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_nofollow(path: Path, limit: int = 1 << 20) -> bytes:
    """Up to the last `limit` bytes of regular file `path`, never through a link.

    For files in a directory a confined QEMU owns (its run dir): QEMU could replace one
    with a link to a host file, which xeniad, root, must not read on its behalf. A hard
    link to another user's file is refused by the kernel (fs.protected_hardlinks)."""
    fd, st = open_nofollow(path)
    try:
        # At most `limit` bytes from where the last `limit` began at fstat: a file that
        # grows while it is read (a console log QEMU appends to) is not followed.
        start = max(0, st.st_size - limit)
        chunks, got = [], 0
        while got < limit and (chunk := os.pread(fd, min(1 << 16, limit - got), start + got)):
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_pid(pidfile: Path) -> int | None:
    """The number in a pidfile; None if it is missing or holds no number."""
    try:
        return int(read_nofollow(pidfile, 64).decode().strip())
    except (OSError, ValueError):
        return None


def pid_state(pid: int) -> str | None:
    """The state letter of process `pid` (R, S, D, Z, ...); None if there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie (a dead child nobody reaped yet)."""
    state = pid_state(pid)
    return state is not None and state not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    """The argv of process `pid` ([] if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def pids_with(text: str) -> list[int]:
    """Processes with `text` in their command line (the fence finds a QEMU that was
    started but not yet recorded by its run directory, cluster/agent.py)."""
    needle = text.encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                if needle in f.read():
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_gone(pid: int, timeout: float, poll: float = 0.02) -> bool:
    """Until `pid` is gone (or a zombie); False if it is still there after `timeout` s."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True


class PidWatch:
    """Calls `on_exit` once, from the event loop, when process `pid` ends: through a
    pidfd, so the process need not be our child (a daemonized QEMU, a container's init).
    Raises ProcessLookupError if it is gone already."""

    def __init__(self, pid: int, on_exit: Callable[[], None]) -> None:
        self.pid = pid
        self._on_exit = on_exit
        self._fd: int | None = os.pidfd_open(pid)
        asyncio.get_running_loop().add_reader(self._fd, self._ended)

    def _ended(self) -> None:
        self.close()
        self._on_exit()

    def send_signal(self, sig: int) -> None:
        """Signal the process through its pidfd (never a reused pid)."""
        if self._fd is None:
            raise ProcessLookupError(f"process {self.pid} is no longer watched")
        signal.pidfd_send_signal(self._fd, sig)

    def close(self) -> None:
        """Stop watching; the process is left alone."""
        if self._fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None


# -- logs ----------------------------------------------------------------------------------
def log_tail(path: Path, lines: int = 12) -> str:
    """The last `lines` lines of a log file ("" if it cannot be read)."""
    try:
        text = read_nofollow(path, 64 * 1024).decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


# -- CPU time and threads --------------------------------------------------------------------
@dataclass(frozen=True)
class ThreadStats:
    """One thread's (or process's) /proc stat: what vcpu-list shows of it."""

    state: str  # R running, S sleeping, D disk wait, T stopped, Z zombie, ...
    cpu_time: float  # seconds in user + kernel mode
    last_cpu: int  # the CPU it last ran on (field 39, "processor")
    name: str  # comm, e.g. QEMU's "CPU 0/KVM"


def parse_stat(text: str) -> ThreadStats:
    """A /proc/.../stat line. The name (field 2) is in parentheses and may hold blanks and
    parentheses itself, so it runs from the first "(" to the last ")"."""
    head, _, rest = text.rpartition(")")
    name = head.partition("(")[2]
    fields = rest.split()  # fields[0] is field 3 (state); field n is fields[n - 3]
    if not head or len(fields) < 37:
        raise ValueError(f"not a /proc stat line: {text[:80]!r}")
    return ThreadStats(state=fields[0],
                       cpu_time=(int(fields[11]) + int(fields[12])) / _CLK_TCK,
                       last_cpu=int(fields[36]),
                       name=name)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (0.0 if it is gone)."""
    try:
        return parse_stat(Path(f"/proc/{pid}/stat").read_text()).cpu_time
    except (OSError, ValueError):
        return 0.0


def thread_stats(pid: int, tid: int) -> ThreadStats:
    """State, CPU time, last CPU and name of thread `tid` of process `pid`."""
    path = Path(f"/proc/{pid}/task/{tid}/stat")
    try:
        text = path.read_text()
    except FileNotFoundError as e:
        raise NotFound(f"Failed to read the stats of thread {tid} of process {pid}: no such "
                       "thread") from e
    except OSError as e:
        raise BackendError(f"Failed to read the stats of thread {tid} of process {pid}: "
                           f"{e.strerror}") from e
    try:
        return parse_stat(text)
    except ValueError as e:
        raise BackendError(f"Failed to read the stats of thread {tid} of process {pid}: "
                           f"{e}") from e


def thread_demand(pid: int, tid: int) -> float:
    """Seconds thread `tid` of `pid` ran on a CPU or waited in a run queue for one
    (/proc schedstat); where that cannot be read, its CPU time (0.0 if it is gone)."""
    try:
        run, wait, _ = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
        return (int(run) + int(wait)) / 1e9
    except (OSError, ValueError):
        try:
            return thread_stats(pid, tid).cpu_time
        except XeniaError:
            return 0.0


def process_threads(pid: int) -> list[int]:
    """Thread ids of process `pid`, ascending."""
    try:
        return sorted(int(t.name) for t in Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError as e:
        raise NotFound(f"Failed to list the threads of process {pid}: no such process") from e
    except OSError as e:
        raise BackendError(f"Failed to list the threads of process {pid}: {e.strerror}") from e


def thread_states(pid: int) -> dict[int, tuple[str, str]]:
    """Thread id -> (name, state letter) of every thread of `pid` ({} if it is gone);
    threads that end while being read are left out."""
    out: dict[int, tuple[str, str]] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            st = parse_stat((task / "stat").read_text())
        except (OSError, ValueError):
            continue
        out[int(task.name)] = (st.name, st.state)
    return out
