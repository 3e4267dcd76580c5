"""BootWatch: notices a QEMU guest that dies or stops in early boot, before its own panic
driver (pvpanic) could tell QEMU.

A kernel that panics before its pvpanic driver is loaded, or hangs, still looks like a
running guest to QEMU, and no on_crash would ever apply. So, during the boot, the watch
reads what QEMU's console chardev writes to its log file (logfile=) and how much the vCPU
threads asked of the host (ran, or waited to run), about once a second:

- the kernel's panic line ("Kernel panic - not syncing") on the console -> a crash;
- with a hang timeout (`boot_watchdog`): no console output and the vCPUs (nearly) never
  runnable for that long -> a crash. Run queue waits count as progress: a guest starved
  on a crowded host is slow, not hung. A panicked kernel busy-waits (panic=0 loops in
  mdelay), so a panic is not an idle vCPU: the panic line is what catches it; a kernel
  that hangs spinning and silent is not caught.

What "boot" is: the hang check ends at the first console line the guest's userspace
writes (a line without printk's "[ seconds]" stamp), because a booted guest may idle
quietly for ever. The panic line is watched GRACE_SECONDS longer: an init that dies at
once panics the kernel, and a distribution loads pvpanic from userspace only. After that
the console is userspace's, and a line quoting an old panic must not kill the guest.

The watch's state outlives xeniad (docs/design.md, "Domains outlive the daemon"): a small
JSON file in the run directory says where this boot's console output starts and, once
decided, the verdict, so a restarted xeniad picks the watch up where it was.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from xenia.errors import XeniaError
from xenia.files import write_atomic
from xenia.hostos.procfs import open_nofollow, read_nofollow
from xenia.qemu.process import QemuProcess
from xenia.store.base import DomainRecord

log = logging.getLogger(__name__)

PANIC_LINE = b"Kernel panic - not syncing"
# printk's time stamp; console lines without one are taken as userspace's.
_KERNEL_LINE = re.compile(rb"\[\s*\d+\.\d+\]")
POLL_SECONDS = 1.0
GRACE_SECONDS = 60.0
# Below this share of the time runnable (running or waiting for a host CPU) the vCPUs
# are idle. Measured here (TCG, QemuProcess.vcpu_demand): a kernel waiting for a root
# device (rootwait) 2.5-3%, and up to 12% while 30 other guests booted on the 2 host
# CPUs (its wakeups waited in the run queue); a booted idle guest 0.2-4%; each of the 30
# booting guests 99-100% throughout (docs/decisions.md).
IDLE_SHARE = 0.25
STATE_FILE = "boot-watch.json"
_READ_LIMIT = 1 << 20  # bytes of new console output read in one poll


@dataclass(frozen=True)
class Verdict:
    reason: str  # "panic" or "hang"
    message: str  # what was seen, for the log and the crash event
    console: str  # the console's last lines


def console_tail(path: Path, lines: int = 15) -> str:
    """The last `lines` lines of a console log (read from its last 16 KiB; never through
    a link, nor from anything but a regular file: the log is in QEMU's run dir)."""
    try:
        data = read_nofollow(path, 16384)
    except OSError:
        return ""
    text = data.decode(errors="replace").replace("\r", "")
    return "\n".join(text.rstrip().splitlines()[-lines:])


class BootWatch:
    """The decisions of one boot's watch; `poll` is fed the time, the vCPUs' demand
    (QemuProcess.vcpu_demand) and whether QEMU runs the guest, and says when the boot has
    failed."""

    def __init__(self, console_log: Path, hang_timeout: float, start: int = 0) -> None:
        self.console_log = console_log
        self.hang_timeout = hang_timeout
        self.start = start  # where this boot's output starts in the log
        self.offset = start
        self.userspace_at: float | None = None
        self.verdict: Verdict | None = None
        self.done = False
        self._partial = b""
        # (time, vCPU demand) since the console was last heard, while running.
        self._quiet: collections.deque[tuple[float, float]] = collections.deque()

    def poll(self, now: float, vcpu_demand: float, running: bool) -> Verdict | None:
        if self.done or self.verdict is not None:
            return self.verdict
        new = self._read()
        lines = (self._partial + new).split(b"\n")
        self._partial = lines[-1]
        for i, line in enumerate(lines):  # the unfinished last one too: a panic may not
            if PANIC_LINE in line:          # have ended its line yet
                text = line.decode(errors="replace").strip()
                return self._decide("panic", f"kernel panic during boot: {text}")
            if self.userspace_at is None and i < len(lines) - 1 and self._userspace(line):
                self.userspace_at = now
        if self.userspace_at is not None:
            self.done = now - self.userspace_at >= GRACE_SECONDS
            return None
        if self.hang_timeout <= 0:
            return None
        if new or not running:  # heard from, or paused (a paused guest is not hung)
            self._quiet.clear()
        if running:
            self._quiet.append((now, vcpu_demand))
        if not self._quiet or now - self._quiet[0][0] < self.hang_timeout:
            return None
        while len(self._quiet) > 1 and now - self._quiet[1][0] >= self.hang_timeout:
            self._quiet.popleft()  # keep the newest sample at least hang_timeout old
        since, demand_then = self._quiet[0]
        used = vcpu_demand - demand_then
        if used < IDLE_SHARE * (now - since):
            return self._decide(
                "hang", f"boot hang: no console output and the vCPUs runnable for {used:.2f} s "
                f"in the last {now - since:.0f} s (boot_watchdog = {self.hang_timeout:g})")
        return None

    @staticmethod
    def _userspace(line: bytes) -> bool:
        text = line.strip()
        return bool(text) and not _KERNEL_LINE.match(text)

    def _read(self) -> bytes:
        # On the event loop, from QEMU's run dir: a FIFO planted there must not block
        # (O_NONBLOCK, regular files only), a link must not be followed to a host file.
        try:
            fd, _ = open_nofollow(self.console_log)
        except OSError:
            return b""
        try:
            data = os.pread(fd, _READ_LIMIT, self.offset)
        except OSError:
            return b""
        finally:
            os.close(fd)
        self.offset += len(data)
        return data

    def _decide(self, reason: str, message: str) -> Verdict:
        self.verdict = Verdict(reason, message, console_tail(self.console_log))
        return self.verdict

    # -- the state file ------------------------------------------------------------------
    def save(self, path: Path) -> None:
        state: dict[str, Any] = {"start": self.start, "hang_timeout": self.hang_timeout}
        if self.verdict is not None:
            state["verdict"] = asdict(self.verdict)
        # In the run dir, which the confined QEMU owns: a fresh name, never a planted
        # file or link; the rename replaces whatever is at `path` without following it.
        write_atomic(path, json.dumps(state).encode(), 0o600)

    @classmethod
    def load(cls, path: Path, console_log: Path) -> BootWatch | None:
        """The watch a state file describes; None without one (the boot is over)."""
        try:
            state = json.loads(read_nofollow(path, 64 * 1024))
            watch = cls(console_log, float(state["hang_timeout"]), int(state["start"]))
            if "verdict" in state:
                watch.verdict = Verdict(**state["verdict"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return watch

    @staticmethod
    def remove(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class BootWatchMixin:
    """The boot watch of a QemuInstance, and the one way its crashes are reported.

    A crash is reported once a boot: pvpanic's GUEST_PANICKED and the panic line on the
    console usually both come for one panic. A reset (restart, reboot) starts a new boot,
    and a new watch where the console log ends then.
    """

    record: DomainRecord
    proc: QemuProcess
    # The hang timeout for this domain's boots; None: no boot watch (not a kernel boot).
    hang_timeout: float | None
    _running: bool  # QEMU runs the vCPUs (RESUME/STOP events)
    _boot: int  # counts the domain's boots in this instance
    _crash_boot: int  # the boot whose crash was reported
    _watch: BootWatch | None
    _watch_task: asyncio.Task[None] | None

    def _report(self, kind: str, data: dict[str, Any]) -> None:
        raise NotImplementedError

    @property
    def _watch_file(self) -> Path:
        return self.proc.files.dir / STATE_FILE

    def watch_boot(self) -> None:
        """Watch the boot that starts now (a start, or a reset): from the console log's
        current end."""
        self._boot += 1
        if self.hang_timeout is None:
            return
        try:
            start = self.proc.files.console_log.lstat().st_size
        except OSError:
            start = 0
        self._start_watch(BootWatch(self.proc.files.console_log, self.hang_timeout, start))

    def adopt_watch(self, running: bool) -> None:
        """Go on with the watch of a boot a previous xeniad was watching, if any; `running`
        says whether QEMU runs the vCPUs now."""
        self._running = running
        watch = BootWatch.load(self._watch_file, self.proc.files.console_log)
        if watch is not None:
            self._start_watch(watch)

    def _start_watch(self, watch: BootWatch) -> None:
        self.stop_watch()
        self._watch = watch
        watch.save(self._watch_file)
        self._watch_task = asyncio.get_running_loop().create_task(
            self._watch_loop(watch), name=f"bootwatch-{self.record.name}")

    def stop_watch(self) -> None:
        self._watch = None
        if self._watch_task is not None and self._watch_task is not asyncio.current_task():
            self._watch_task.cancel()
        self._watch_task = None

    async def _watch_loop(self, watch: BootWatch) -> None:
        while self._watch is watch and self.proc.alive:
            verdict = watch.poll(time.monotonic(), self._vcpu_demand(watch), self._running)
            if verdict is not None:
                await self._boot_failed(watch, verdict)
                return
            if watch.done:
                BootWatch.remove(self._watch_file)
                self._watch = None
                return
            await asyncio.sleep(POLL_SECONDS)

    def _vcpu_demand(self, watch: BootWatch) -> float:
        # Only the hang check needs it, and only until userspace speaks.
        if watch.hang_timeout <= 0 or watch.userspace_at is not None:
            return 0.0
        return self.proc.vcpu_demand()

    async def _boot_failed(self, watch: BootWatch, verdict: Verdict) -> None:
        watch.save(self._watch_file)  # the verdict outlives a restart of xeniad
        # Stop the vCPUs as pvpanic's panic=pause would: a panicked kernel spins in its
        # panic loop and would take a host CPU for as long as the domain is kept.
        with contextlib.suppress(XeniaError):
            await self.proc.qmp.stop()
        self._boot_crashed(verdict)

    def panic_reboot(self) -> bool:
        """A kernel booted with panic=N reboots itself after a panic. If this boot's console
        shows the panic (read now), report the reboot as the crash it is; True if so."""
        watch = self._watch
        verdict = watch.poll(time.monotonic(), 0.0, False) if watch is not None else None
        if verdict is None or verdict.reason != "panic":
            return False
        self._boot_crashed(verdict)
        return True

    def _boot_crashed(self, verdict: Verdict) -> None:
        log.warning("domain %s: %s; the console's last lines:\n%s", self.record.name,
                    verdict.message, verdict.console)
        self.crashed({"reason": verdict.message, "console": verdict.console})

    def crashed(self, data: dict[str, Any]) -> None:
        """Report a crash of this boot, once."""
        if self._crash_boot == self._boot:
            return
        self._crash_boot = self._boot
        self._watch = None  # known now; the state file stays until the next boot or destroy
        self._report("crash", data)
