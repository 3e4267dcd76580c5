"""The boot watch (drivers/qemu_bootwatch.py): its decisions on a scripted console log and
scripted vCPU demand, and how a QemuInstance reports what it decides (a scripted process)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from xenia.config.model import DomainConfig
from xenia.drivers import qemu_bootwatch
from xenia.drivers.qemu_bootwatch import GRACE_SECONDS, IDLE_SHARE, BootWatch, Verdict
from xenia.drivers.qemu_instance import QemuInstance
from xenia.qemu.cmdline import RunFiles
from xenia.qemu.commands import Qmp
from xenia.store.base import DomainRecord

KERNEL = b"[    0.000000] Linux version 6.1.0\r\n[    0.120000] Calibrating delay loop\r\n"
PANIC = (b"[    0.064000] Kernel panic - not syncing: IO-APIC + timer doesn't work!  Boot "
         b"with apic=debug\r\n")


class Console:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_bytes(b"")

    def write(self, data: bytes) -> None:
        with self.path.open("ab") as f:
            f.write(data)


@pytest.fixture
def console(tmp_path: Path) -> Console:
    return Console(tmp_path / "console.log")


def test_the_panic_line_is_a_crash(console: Console) -> None:
    console.write(KERNEL)
    watch = BootWatch(console.path, hang_timeout=0)
    assert watch.poll(0.0, 0.0, True) is None
    console.write(PANIC[:60])  # the line is still being written
    verdict = watch.poll(1.0, 0.0, True)
    assert verdict is not None and verdict.reason == "panic"
    assert "Kernel panic - not syncing" in verdict.message
    assert "Calibrating delay loop" in verdict.console
    assert watch.poll(2.0, 0.0, True) is verdict  # decided once


def test_a_panic_before_this_boot_does_not_count(console: Console) -> None:
    console.write(KERNEL + PANIC)
    watch = BootWatch(console.path, hang_timeout=0, start=console.path.stat().st_size)
    console.write(KERNEL)
    assert watch.poll(0.0, 0.0, True) is None


def test_userspace_ends_the_hang_check_and_the_panic_watch_after_grace(
        console: Console) -> None:
    watch = BootWatch(console.path, hang_timeout=10)
    console.write(KERNEL + b"xenia-tiny: init on 6.1.0\r\n")
    assert watch.poll(0.0, 0.0, True) is None and watch.userspace_at == 0.0
    # Quiet and idle long after userspace spoke: a booted idle guest, not a hang.
    assert watch.poll(GRACE_SECONDS - 1, 0.0, True) is None and not watch.done
    # A panic within the grace (init died, pvpanic not loaded yet) still counts...
    console.write(b"[    5.5] Kernel panic - not syncing: Attempted to kill init!\r\n")
    v = watch.poll(GRACE_SECONDS - 0.5, 0.0, True)
    assert v is not None and v.reason == "panic"
    # ...but after it the console is userspace's: a quoted panic line is not a crash.
    other = Console(console.path.with_name("other.log"))
    later = BootWatch(other.path, hang_timeout=10)
    other.write(KERNEL + b"xenia-tiny: init on 6.1.0\r\n")
    later.poll(0.0, 0.0, True)
    assert later.userspace_at == 0.0
    assert later.poll(GRACE_SECONDS, 0.0, True) is None and later.done
    other.write(PANIC)
    assert later.poll(GRACE_SECONDS + 1, 0.0, True) is None


def test_a_partial_unstamped_line_is_not_userspace_yet(console: Console) -> None:
    watch = BootWatch(console.path, hang_timeout=10)
    console.write(b"[    1.5")  # a kernel line under way
    watch.poll(0.0, 0.0, True)
    assert watch.userspace_at is None
    console.write(b"00000] ok\r\n\r\n")
    watch.poll(1.0, 0.0, True)
    assert watch.userspace_at is None  # blank lines are nobody's


def test_hang_quiet_and_idle_for_the_timeout(console: Console) -> None:
    console.write(KERNEL)
    watch = BootWatch(console.path, hang_timeout=20)
    cpu = 5.0
    for t in range(0, 20):
        assert watch.poll(float(t), cpu, True) is None
        cpu += 0.03  # 3%: a kernel waiting for a root device
    v = watch.poll(20.0, cpu, True)
    assert v is not None and v.reason == "hang"
    assert "no console output" in v.message and "boot_watchdog = 20" in v.message
    assert "Calibrating delay loop" in v.console


def test_no_hang_while_busy_heard_or_paused(console: Console) -> None:
    busy = BootWatch(console.path, hang_timeout=20)
    for t in range(0, 100):  # quiet, but the vCPU works (module signature checks, say)
        assert busy.poll(float(t), t * (IDLE_SHARE * 2), True) is None
    heard = BootWatch(console.path, hang_timeout=20)
    for t in range(0, 100):
        if t % 15 == 0:
            console.write(b"[    1.0] probing\r\n")
        assert heard.poll(float(t), 0.0, True) is None
    paused = BootWatch(console.path, hang_timeout=20)
    for t in range(0, 100):  # paused (xenia pause, create -p): not hung
        assert paused.poll(float(t), 0.0, t % 19 == 0) is None
    off = BootWatch(console.path, hang_timeout=0)
    for t in range(0, 100):
        assert off.poll(float(t), 0.0, True) is None


def test_busy_then_idle_is_a_hang_once_the_window_is_idle_enough(console: Console) -> None:
    timeout = 20
    watch = BootWatch(console.path, hang_timeout=timeout)
    for t in range(0, 11):  # runnable all the time until t=10, then idle
        assert watch.poll(float(t), float(t), True) is None
    # At t the window [t - timeout, t] holds 10 - (t - timeout) busy seconds.
    last_busy_enough = int(10 + timeout * (1 - IDLE_SHARE))
    for t in range(11, last_busy_enough + 1):
        assert watch.poll(float(t), 10.0, True) is None, t
    v = watch.poll(last_busy_enough + 1.0, 10.0, True)
    assert v is not None and v.reason == "hang"


def test_state_file_round_trip(console: Console, tmp_path: Path) -> None:
    state = tmp_path / "boot-watch.json"
    watch = BootWatch(console.path, hang_timeout=30, start=123)
    watch.save(state)
    back = BootWatch.load(state, console.path)
    assert back is not None and (back.start, back.offset, back.hang_timeout) == (123, 123, 30)
    assert back.verdict is None
    watch.verdict = Verdict("hang", "boot hang", "last lines")
    watch.save(state)
    back = BootWatch.load(state, console.path)
    assert back is not None and back.verdict == watch.verdict
    assert back.poll(0.0, 0.0, True) == watch.verdict
    BootWatch.remove(state)
    assert BootWatch.load(state, console.path) is None
    state.write_text("{not json")
    assert BootWatch.load(state, console.path) is None


# -- a QemuInstance with a scripted QEMU process ------------------------------------------
def in_thread(fn: Any, timeout: float = 5.0) -> Any:
    """fn() in a thread; fails (instead of hanging the suite) if it does not return."""
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} blocked"
    return out[0]


def test_a_fifo_as_console_log_returns_at_once(tmp_path: Path) -> None:
    """A compromised QEMU owns its run dir and may put a FIFO where its console log was:
    the watch (on the event loop) and the tail must not block on it."""
    log = tmp_path / "console.log"
    os.mkfifo(log)
    try:
        watch = BootWatch(log, 5, 0)
        assert in_thread(lambda: watch.poll(0.0, 0.0, True)) is None
        assert in_thread(lambda: qemu_bootwatch.console_tail(log)) == ""
    finally:
        # Let a reader the old code left blocked in open() go.
        with contextlib.suppress(OSError):
            os.close(os.open(log, os.O_WRONLY | os.O_NONBLOCK))


def test_a_link_as_console_log_is_not_followed(tmp_path: Path) -> None:
    """A symlink to a host file (a secret; here one with a panic line) is read neither by
    the watch nor by the tail."""
    secret = tmp_path / "shadow"
    secret.write_bytes(KERNEL + PANIC)
    log = tmp_path / "console.log"
    log.symlink_to(secret)
    watch = BootWatch(log, 5, 0)
    assert watch.poll(0.0, 0.0, True) is None
    assert watch.offset == 0
    assert qemu_bootwatch.console_tail(log) == ""


class ScriptedProcess:
    """What QemuInstance uses of a QemuProcess: files, liveness, QMP commands, vCPU demand."""

    def __init__(self, run_dir: Path) -> None:
        run_dir.mkdir()
        self.files = RunFiles(run_dir)
        self.files.console_log.write_bytes(b"")
        self.alive = True
        self.commands: list[str] = []
        self.vcpu = 0.0
        self.qmp = Qmp(self)  # the typed commands, over command() below

    def on_exit(self, callback: Any) -> None:
        pass

    def vcpu_demand(self) -> float:
        return self.vcpu

    async def command(self, cmd: str, args: dict[str, Any] | None = None,
                      timeout: float = 30.0) -> Any:
        self.commands.append(cmd)
        return {"status": "paused"} if cmd == "query-status" else {}

    def write(self, data: bytes) -> None:
        with self.files.console_log.open("ab") as f:
            f.write(data)

    async def kill(self) -> None:
        self.alive = False

    async def close(self) -> None:
        pass

    def remove_files(self) -> None:
        pass


class Scripted:
    def __init__(self, tmp_path: Path, hang_timeout: float | None = 0) -> None:
        self.proc = ScriptedProcess(tmp_path / "run")
        self.events: list[tuple[str, dict[str, Any]]] = []

        async def events(kind: str, data: dict[str, Any]) -> None:
            self.events.append((kind, data))

        rec = DomainRecord(uuid="u", name="g", domid=1,
                           config=DomainConfig(name="g", kernel="/k"))
        self.inst = QemuInstance(rec, self.proc, events, None,  # type: ignore[arg-type]
                                 hang_timeout)

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu_bootwatch, "POLL_SECONDS", 0.01)


async def wait_for(cond: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_console_panic_stops_the_guest_and_is_reported_once(tmp_path: Path) -> None:
    async def run() -> None:
        s = Scripted(tmp_path)
        s.inst.watch_boot()
        await s.inst.on_qmp_event("RESUME", {})
        s.proc.write(KERNEL + PANIC)
        await wait_for(lambda: s.events)
        # pvpanic's event for the same panic comes too, and is not a second crash.
        await s.inst.on_qmp_event("GUEST_PANICKED", {"action": "pause"})
        await s.settle()
        assert [k for k, _ in s.events] == ["crash"]
        assert "Kernel panic" in s.events[0][1]["reason"]
        assert "IO-APIC" in s.events[0][1]["console"]
        assert "stop" in s.proc.commands  # the spinning vCPU is stopped
        # The verdict is in the run directory, for a restarted xeniad.
        again = BootWatch.load(s.proc.files.dir / "boot-watch.json", s.proc.files.console_log)
        assert again is not None and again.verdict is not None
        await s.inst.destroy()

    asyncio.run(run())


def test_a_reset_starts_a_new_boot(tmp_path: Path) -> None:
    async def run() -> None:
        s = Scripted(tmp_path)
        s.inst.watch_boot()
        await s.inst.on_qmp_event("GUEST_PANICKED", {"action": "pause"})
        s.proc.write(KERNEL + PANIC)
        await s.settle()
        assert [k for k, _ in s.events] == ["crash"]
        await s.inst.reset()  # on_crash=restart: the old panic line is history
        await s.inst.on_qmp_event("RESUME", {})
        s.proc.write(KERNEL)
        await asyncio.sleep(0.1)
        assert len(s.events) == 1
        s.proc.write(PANIC)  # the new boot panics too: a second crash
        await wait_for(lambda: len(s.events) == 2)
        await s.inst.destroy()

    asyncio.run(run())


def test_a_panic_reboot_is_a_crash_and_a_plain_reboot_is_not(tmp_path: Path) -> None:
    async def run() -> None:
        s = Scripted(tmp_path)
        s.inst.watch_boot()
        s.proc.write(KERNEL)
        await s.inst.on_qmp_event("SHUTDOWN", {"guest": True, "reason": "guest-reset"})
        await s.settle()
        assert [k for k, _ in s.events] == ["reboot"]
        await s.inst.reset()
        s.proc.write(KERNEL + PANIC)  # panic=-1: the kernel resets at once
        await s.inst.on_qmp_event("SHUTDOWN", {"guest": True, "reason": "guest-reset"})
        await s.settle()
        assert [k for k, _ in s.events] == ["reboot", "crash"]
        await s.inst.destroy()

    asyncio.run(run())


def test_hang_verdict_and_no_watch_without_a_kernel(tmp_path: Path) -> None:
    async def run() -> None:
        s = Scripted(tmp_path / "a", hang_timeout=0.3)
        s.inst.watch_boot()
        await s.inst.on_qmp_event("RESUME", {})
        s.proc.write(KERNEL + b"[    5.7] Waiting for root device /dev/vdz...\r\n")
        await wait_for(lambda: s.events, timeout=10)
        assert s.events[0][0] == "crash" and "boot hang" in s.events[0][1]["reason"]
        assert "Waiting for root device" in s.events[0][1]["console"]
        await s.inst.destroy()
        hvm = Scripted(tmp_path / "b", hang_timeout=None)  # firmware boot: no watch
        hvm.inst.watch_boot()
        hvm.proc.write(PANIC)
        await asyncio.sleep(0.1)
        assert hvm.events == [] and hvm.inst._watch_task is None
        await hvm.inst.on_qmp_event("GUEST_PANICKED", {})  # pvpanic still counts
        await hvm.settle()
        assert [k for k, _ in hvm.events] == ["crash"]

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    asyncio.run(run())


def test_adopted_watch_goes_on_and_reports_a_stored_verdict(tmp_path: Path) -> None:
    async def run() -> None:
        s = Scripted(tmp_path / "a")
        state = s.proc.files.dir / "boot-watch.json"
        BootWatch(s.proc.files.console_log, 0, 0).save(state)
        s.proc.write(KERNEL + PANIC)  # panicked while no xeniad watched
        s.inst.adopt_watch(running=True)
        await wait_for(lambda: s.events)
        assert s.events[0][0] == "crash"
        await s.inst.destroy()
        t = Scripted(tmp_path / "b")
        watch = BootWatch(t.proc.files.console_log, 5, 0)
        watch.verdict = Verdict("hang", "boot hang: ...", "tail")
        watch.save(t.proc.files.dir / "boot-watch.json")
        t.inst.adopt_watch(running=False)
        await wait_for(lambda: t.events)
        assert t.events[0][1]["reason"] == "boot hang: ..." and "stop" in t.proc.commands
        await t.inst.destroy()
        u = Scripted(tmp_path / "c")  # no state file: the boot was over, nothing to watch
        u.inst.adopt_watch(running=True)
        assert u.inst._watch_task is None

    for d in "abc":
        (tmp_path / d).mkdir()
    asyncio.run(run())


def test_s3_events_mark_the_instance_suspended_and_list_shows_it(tmp_path: Path) -> None:
    """SUSPEND/WAKEUP (no STOP/RESUME for S3) set what `xenia list` and `top` show."""
    from xenia.host.views import shown_state, state_letters
    from xenia.store.state import PAUSED, RUNNING

    async def run() -> None:
        s = Scripted(tmp_path)
        await s.inst.on_qmp_event("RESUME", {})
        assert not s.inst.suspended
        await s.inst.on_qmp_event("SUSPEND", {})
        assert s.inst.suspended
        assert state_letters(RUNNING, False, s.inst.suspended) == "--s---"
        assert shown_state(RUNNING, s.inst.suspended) == "suspended"
        await s.inst.on_qmp_event("WAKEUP", {})
        assert not s.inst.suspended
        assert shown_state(RUNNING, s.inst.suspended) == "running"
        await s.inst.on_qmp_event("SUSPEND", {})
        await s.inst.on_qmp_event("RESET", {})
        assert not s.inst.suspended
        # A paused domain is paused, whatever its guest did before.
        assert state_letters(PAUSED, False, True) == "--p---"
        assert shown_state(PAUSED, True) == "paused"

    asyncio.run(run())
