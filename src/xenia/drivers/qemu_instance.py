"""QemuInstance: one running QEMU domain, its events and verbs (QemuDriver makes it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Any

from xenia.drivers.base import (
    GuestEvents,
    Instance,
    guest_traffic,
    nic_counters,
)
from xenia.drivers.qemu_bootwatch import BootWatch, BootWatchMixin
from xenia.drivers.qemu_devices import QemuDevices
from xenia.drivers.qemu_hotplug import QemuHotplug
from xenia.drivers.qemu_xlverbs import XlVerbsMixin
from xenia.errors import BackendError, InvalidConfig, XeniaError
from xenia.hostos.peercred import Peer
from xenia.hostos.procfs import log_tail
from xenia.qemu.process import QemuProcess
from xenia.store.base import DomainRecord

log = logging.getLogger(__name__)

# The qdev path of a disk: /machine/peripheral/disk-xvda/virtio-backend (cdroms too).
_DISK_QDEV = re.compile(r"/disk-([^/]+)")


class QemuInstance(BootWatchMixin, XlVerbsMixin, Instance):
    def __init__(self, record: DomainRecord, proc: QemuProcess, events: GuestEvents,
                 host: QemuDevices, hang_timeout: float | None = None) -> None:
        self.record = record  # as at start: for its name in messages, not for state
        self.proc = proc
        self.qmp = proc.qmp
        self.devices: QemuHotplug = QemuHotplug(record, proc, host)
        self.hang_timeout = hang_timeout
        self._events = events
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = False
        self.suspended = False  # in S3: QEMU's SUSPEND until its WAKEUP
        self._boot = 0
        self._crash_boot = -1
        self._watch: BootWatch | None = None
        self._watch_task: asyncio.Task[None] | None = None
        proc.on_exit(self._exited)

    # -- events from QEMU ---------------------------------------------------------------
    async def on_qmp_event(self, name: str, data: dict[str, Any]) -> None:
        if name == "SHUTDOWN":
            reason = data.get("reason")
            # `xenia reboot -F` is a system_reset, which -action reboot=shutdown turns
            # into this shutdown: it is a reboot for on_reboot's sake.
            if reason in ("guest-reset", "host-qmp-system-reset"):
                if reason != "guest-reset" or not self.panic_reboot():
                    self._report("reboot", data)
            elif data.get("guest"):
                self._report("poweroff", data)
        elif name == "GUEST_PANICKED":
            self.crashed(data)
        elif name == "WATCHDOG":
            # -action watchdog=pause: the guest is stopped; on_watchdog decides the rest.
            self._report("watchdog", data)
        elif name in ("RESUME", "STOP"):
            self._running = name == "RESUME"
        elif name in ("SUSPEND", "WAKEUP", "RESET"):
            # S3 stops the vCPUs without a STOP event, and WAKEUP runs them again; a
            # reset (xenia reboot -F of a sleeping guest) wakes it without a WAKEUP.
            self.suspended = name == "SUSPEND"
        elif name == "DEVICE_DELETED":
            # Unplugged CPUs are reported only through their lapic child's path
            # (/machine/peripheral/vcpu2/lapic), without "device".
            qdev = data.get("device")
            path = str(data.get("path", ""))
            if not qdev and path.startswith("/machine/peripheral/"):
                qdev = path.split("/")[3]
            if qdev:
                self.devices.device_deleted(str(qdev))

    def _exited(self) -> None:
        if not self._stopping:
            self._report("exited", {})

    def _report(self, kind: str, data: dict[str, Any]) -> None:
        # In a task of its own: the manager's reaction (destroy, say) closes the QMP
        # session, and must not cancel the event pump it would otherwise be running in.
        task = asyncio.get_running_loop().create_task(self._events(kind, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- verbs ---------------------------------------------------------------------------
    async def resume(self) -> None:
        await self.qmp.cont()

    async def pause(self) -> None:
        await self.qmp.stop()

    async def power_button(self) -> None:
        await self.qmp.system_powerdown()

    async def request_reboot(self, force: bool = False) -> None:
        if force:
            # A hard reset, seen by the manager as a guest reboot so on_reboot applies.
            await self.qmp.system_reset()
            return
        # ACPI has no reboot button; Ctrl-Alt-Del is what a PC guest treats as a
        # clean reboot request (Linux: init/systemd's ctrl-alt-del handling).
        await self.qmp.send_key(["ctrl", "alt", "delete"])

    async def reset(self) -> None:
        # The console output from here on is the next boot's.
        self.watch_boot()
        # With -action reboot=shutdown QEMU turns every reset request, system_reset too,
        # into a shutdown; so reset is allowed for the duration of this one reset.
        await self.qmp.set_action(reboot="reset")
        try:
            await self.qmp.system_reset()
            # The reset is carried out by QEMU's main loop later; until then the VM is
            # still "shutdown"/"guest-panicked" and `cont` is refused; then "prelaunch".
            for _ in range(400):
                status = await self.qmp.query_status()
                if status not in ("shutdown", "guest-panicked", "internal-error"):
                    break
                await asyncio.sleep(0.025)
            else:
                raise BackendError(
                    f"Failed to restart {self.record.name}: the reset did not complete"
                )
        finally:
            await self.qmp.set_action(reboot="shutdown")
        if status != "running":
            await self.qmp.cont()

    async def destroy(self) -> None:
        self._stopping = True
        self.stop_watch()
        try:
            await self.proc.kill()
        finally:
            await self.proc.close()
            self.proc.remove_files()

    async def detach(self) -> None:
        self._stopping = True
        self.stop_watch()
        await self.proc.close()

    async def dump_core(self, path: Path) -> None:
        """QEMU's user may not write where the core goes: xeniad makes the file (no link
        followed, none replaced, in the directory it opened) and passes QEMU the open
        fd over QMP (getfd), as libvirt does; QEMU never opens a path."""
        fail = f"Failed to dump the core of '{self.record.name}' to {path}"
        if not path.is_absolute() or path.name in ("", ".", ".."):
            raise InvalidConfig(f"{fail}: the file must be an absolute path to a file")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise BackendError(f"{fail}: {e.strerror}; give an existing directory") from e
        try:
            try:
                fd = os.open(path.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
            except OSError as e:
                raise BackendError(f"{fail}: {e.strerror}; name a file that does not "
                                   "exist yet") from e
            try:
                fdname = f"dump-{os.getpid()}-{fd}"
                await self.qmp.getfd(fdname, fd)
                await self.qmp.dump_guest_memory(fdname)
            except BaseException:
                # Ours alone (O_EXCL): a failed dump leaves no half-written core behind.
                with contextlib.suppress(OSError):
                    os.unlink(path.name, dir_fd=dir_fd)
                raise
            finally:
                os.close(fd)
        finally:
            os.close(dir_fd)

    def console_path(self) -> Path:
        return self.proc.files.console

    def console_peer(self) -> Peer:
        return Peer(self.proc.uid, self.proc.pid)

    def console_log(self) -> Path:
        return self.proc.files.console_log

    def log_tail(self) -> str:
        return log_tail(self.proc.files.qemu_log)

    async def run_state(self) -> str | None:
        try:
            return await self.qmp.query_status()
        except XeniaError:
            return None

    async def stats(self, rec: DomainRecord) -> dict[str, Any]:
        """Counters for `xenia top`: memory, disks (query-blockstats), NICs (taps)."""
        out: dict[str, Any] = {"cpu_time": self.cpu_seconds(), "vcpus": rec.config.vcpus}
        try:
            out["memory_kib"] = (await self.devices.balloon_actual_mib()) * 1024
        except XeniaError:
            out["memory_kib"] = rec.config.memory * 1024
        rd_ops = wr_ops = rd_b = wr_b = 0
        disks: list[dict[str, Any]] = []
        try:
            for dev in await self.qmp.query_blockstats():
                found = _DISK_QDEV.search(str(dev.get("qdev", "")))
                if found is None:
                    continue
                st = dev.get("stats", {})
                n = {k: int(st.get(k, 0)) for k in ("rd_operations", "wr_operations",
                                                    "rd_bytes", "wr_bytes")}
                disks.append({"vdev": found.group(1), **n})
                rd_ops += n["rd_operations"]
                wr_ops += n["wr_operations"]
                rd_b += n["rd_bytes"]
                wr_b += n["wr_bytes"]
        except XeniaError:
            pass
        out.update(vbds=len(rec.config.disks), vbd_rd_ops=rd_ops, vbd_wr_ops=wr_ops,
                   vbd_rd_bytes=rd_b, vbd_wr_bytes=wr_b, disk_io=disks)
        taps = dict(rec.runtime.get("taps", {}))
        # No thread hop without NICs: a scrape of many domains would queue on the pool.
        nics = await asyncio.to_thread(nic_counters, self.devices.host.network,
                                       taps) if taps else []
        rx, tx = guest_traffic(nics)
        out.update(nets=len(rec.config.vifs), net_rx_bytes=rx, net_tx_bytes=tx, nic_io=nics)
        return out

    def cpu_seconds(self) -> float:
        return self.proc.cpu_seconds()

    def running_now(self) -> bool:
        return any(state == "R" for _, state in self.proc.vcpu_threads().values())

    @property
    def alive(self) -> bool:
        return self.proc.alive
