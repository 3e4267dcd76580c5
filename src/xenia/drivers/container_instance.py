"""ContainerInstance: one running container domain; ContainerDevices its device verbs.

xeniad watches the init with a pidfd; when it exits, the status the monitor recorded says
what happened (classify: containers' reboot is the kernel's: reboot() inside a pid
namespace kills its init with SIGHUP, poweroff/halt with SIGINT).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

from xenia.containers import confine
from xenia.drivers.base import (
    DeviceControl,
    GuestEvents,
    Instance,
    guest_traffic,
    nic_counters,
)
from xenia.drivers.container_host import ContainerHost
from xenia.errors import BackendError, NotSupported, XeniaError
from xenia.hostos import affinity
from xenia.hostos.procfs import PidWatch, log_tail, pid_alive, pid_state
from xenia.revert import Revert
from xenia.store.base import DomainRecord
from xenia.store.state import PAUSED

log = logging.getLogger(__name__)

# What power_button and request_reboot send to the container's init. SIGPWR and SIGINT
# are LXC's defaults: busybox init halts on SIGPWR and runs its ctrlaltdel action on
# SIGINT, sysvinit runs its powerfail/ctrlaltdel actions, and SIGINT is what the kernel
# sends init for Ctrl-Alt-Del (which `xenia reboot` presses on VMs).
POWEROFF_SIGNAL = signal.SIGPWR
REBOOT_SIGNAL = signal.SIGINT


def classify(status: dict[str, Any] | None, requested: str | None) -> str:
    """The guest event of an init that exited with `status` (exit.json; None: unknown)
    after `requested` ("poweroff", "reboot" or None) was asked of it."""
    if status is not None:
        # reboot() in a pid namespace: RESTART kills its init with SIGHUP, POWER_OFF and
        # HALT with SIGINT (kernel/pid_namespace.c, reboot_pid_ns). Nothing else can
        # make a namespace's init die of these: it ignores signals it has no handler for.
        sig = status.get("signal")
        if sig == signal.SIGHUP:
            return "reboot"
        if sig == signal.SIGINT:
            return "poweroff"
    if requested in ("poweroff", "reboot"):
        return requested
    if status is None:
        return "exited"
    if status.get("code") == 0:
        return "poweroff"  # the init ended cleanly: the system is down
    return "crash"



class ContainerInstance(Instance):
    def __init__(self, host: ContainerHost, record: DomainRecord, events: GuestEvents,
                 pid: int | None) -> None:
        self.record = record  # as at start: for its name and uuid, not for state
        self.host = host
        self.files = host.files(record.uuid)
        self.devices = ContainerDevices(self)
        self.pid = pid
        self._events = events
        self._watch: PidWatch | None = None
        self._stopping = False
        self._destroyed = False
        self._exited = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- watching the init ---------------------------------------------------------------
    def watch(self) -> None:
        """Watch the init's exit through a pidfd (it is the monitor's child, not ours)."""
        assert self.pid is not None
        self._exited.clear()
        try:
            self._watch = PidWatch(self.pid, self._exit_seen)
        except ProcessLookupError:
            self._exit_seen()

    def _stop_watching(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def _exit_seen(self) -> None:
        self._stop_watching()
        self._exited.set()
        if not self._stopping:
            self._spawn(self._report_exit())

    def exited_unwatched(self, report: bool) -> None:
        """The init ended while no daemon watched (found at adoption); with `report`,
        what the monitor recorded says what happened, as a guest event."""
        self._exited.set()
        if report:
            self._spawn(self._report_exit())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report_exit(self) -> None:
        status = await asyncio.to_thread(self.host.exit_status, self.files, self.pid)
        requested = self.host.requested(self.files)
        kind = classify(status, requested)
        log.info("domain %s: init %s exited (%s, asked: %s): %s", self.record.name, self.pid,
                 status or "status unknown", requested or "nothing", kind)
        if not self._stopping:
            try:
                await self._events(kind, {"exit": status, "requested": requested})
            except Exception:  # noqa: BLE001 - a task of our own: say it, do not lose it
                log.exception("domain %s: handling its %s failed", self.record.name, kind)

    @property
    def running(self) -> bool:
        return self.pid is not None and not self._exited.is_set() and pid_alive(self.pid)

    def _signal(self, sig: int, what: str) -> None:
        if self._watch is None or not self.running:
            raise BackendError(f"Failed to {what} '{self.record.name}': its init is not "
                               "running")
        self._watch.send_signal(sig)

    # -- verbs ---------------------------------------------------------------------------
    async def resume(self) -> None:
        state = await asyncio.to_thread(self.host.crun.state, self.record.uuid)
        if state is not None and state.get("status") == "created":
            await asyncio.to_thread(self.host.crun.start, self.record.uuid)
        else:
            await asyncio.to_thread(self.host.cgroup(self.record).thaw)

    async def pause(self) -> None:
        await asyncio.to_thread(self.host.cgroup(self.record).freeze)

    async def power_button(self) -> None:
        self.host.set_requested(self.files, "poweroff")
        self._signal(POWEROFF_SIGNAL, "shut down")

    async def request_reboot(self, force: bool = False) -> None:
        self.host.set_requested(self.files, "reboot")
        # -F: a hard reset; the recorded request makes its SIGKILL count as a reboot.
        self._signal(signal.SIGKILL if force else REBOOT_SIGNAL, "reboot")

    async def reset(self) -> None:
        """Boot the container again in place (on_*=restart): same domain, cgroups and
        filesystem changes; a new init, monitor and NICs."""
        self._stopping = True
        self._stop_watching()
        # The store's copy: mem-set, vcpu-set and sched-credit changed it since start.
        rec = self.host.store.get(self.record.uuid) or self.record
        await asyncio.to_thread(self.host.end_boot, rec, self.pid)
        self.pid = None
        try:
            async with Revert() as revert:
                pid = await self.host.boot(rec)
                revert.add(lambda: asyncio.to_thread(self.host.end_boot, rec, pid))
                await asyncio.to_thread(self.host.crun.start, rec.uuid)
                revert.success()
        except Exception as e:  # noqa: BLE001 - reported as an event, not lost in a task
            # Nothing runs now. The manager goes on from "restarted"; the exit that
            # follows applies on_crash (destroy, by default), as for a VM that died.
            msg = e.message if isinstance(e, XeniaError) else repr(e)
            log.error("domain %s: restarting failed: %s", rec.name, msg)
            self._exited.set()
            self._stopping = False
            self._spawn(self._events("exited", {"error": msg}))
            return
        self.pid = pid
        self._stopping = False
        self.watch()
        # The manager saves its own copy of the record right after reset() returns: the
        # new boot's runtime facts (pid, ...) go into the store after that.
        self._spawn(self.host.note_runtime(rec.uuid, dict(rec.runtime)))

    async def destroy(self) -> None:
        self._stopping = True
        self._destroyed = True
        self._stop_watching()
        await asyncio.to_thread(self.host.teardown, self.record, self.pid)

    async def detach(self) -> None:
        self._stopping = True
        self._stop_watching()

    async def dump_core(self, path: Path) -> None:
        raise NotSupported(f"Failed to dump the core of '{self.record.name}': a container "
                           "has no machine memory to dump (its processes are host processes)")

    def console_path(self) -> Path:
        return self.files.console

    def console_log(self) -> Path:
        return self.files.console_log

    def log_tail(self) -> str:
        return log_tail(self.files.monitor_log)

    def cpu_seconds(self) -> float:
        try:
            return self.host.cgroup(self.record).cpu_time()
        except XeniaError:
            return 0.0

    async def stats(self, rec: DomainRecord) -> dict[str, Any]:
        cg = self.host.cgroup(rec)
        out: dict[str, Any] = {"cpu_time": self.cpu_seconds(),
                               "vcpus": len(rec.runtime.get("cpuset") or []) or rec.config.vcpus}
        with contextlib.suppress(XeniaError):
            out["memory_kib"] = cg.memory_usage() // 1024
        veths = dict(rec.runtime.get("veths", {}))
        nics = await asyncio.to_thread(nic_counters, self.host.network,
                                       veths) if veths else []
        rx, tx = guest_traffic(nics)
        out.update(nets=len(rec.config.vifs), net_rx_bytes=rx, net_tx_bytes=tx, vbds=0,
                   nic_io=nics, disk_io=[])
        return out

    def running_now(self) -> bool:
        if not self.running:
            return False
        try:
            pids = self.host.cgroup(self.record).pids()
        except XeniaError:
            return False
        return any(pid_state(pid) == "R" for pid in pids)

    @property
    def alive(self) -> bool:
        # A stopped container preserved by on_*=preserve is still there (its console log,
        # its cgroup) until destroyed, as a VM's QEMU is.
        return not self._destroyed


class ContainerDevices(DeviceControl):
    """mem-set (the cgroup's memory limit), vcpu-set (the cpuset) and vcpu-list of a
    container; the rest is refused (a container has no disks, hotplug NICs or PCI)."""

    def __init__(self, inst: ContainerInstance) -> None:
        super().__init__(inst.record)
        self.inst = inst
        self.host = inst.host

    async def set_memory(self, rec: DomainRecord, mib: int) -> None:
        await asyncio.to_thread(confine.set_memory, self.host.cgroup(rec), mib * 1024 * 1024)

    async def set_vcpus(self, rec: DomainRecord, count: int) -> list[int]:
        return await asyncio.to_thread(self.host.set_cpus, rec, count)

    async def vcpu_rows(self, rec: DomainRecord) -> list[dict[str, Any]]:
        cpus = sorted(rec.runtime.get("cpuset") or [])
        total = self.inst.cpu_seconds()
        if rec.state == PAUSED:
            state = "--p"
        else:
            state = "r--" if self.inst.running_now() else "-b-"
        hard = affinity.format_cpulist(cpus) if cpus else "all"
        return [{"name": rec.name, "domid": rec.domid, "vcpu": i, "cpu": cpu, "state": state,
                 # A container's CPU time is its cgroup's; shown evenly over its CPUs.
                 "time": total / len(cpus), "hard": hard,
                 "soft": rec.config.cpus_soft or "all"}
                for i, cpu in enumerate(cpus)]
