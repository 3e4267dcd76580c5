"""QemuDriver: pv, pvh and hvm domains as QEMU processes (qemu_instance.QemuInstance
drives one of them)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from xenia.devices import display, spice
from xenia.drivers import qemu_boot, qemu_cpu, qemu_migrate, qemu_replica
from xenia.drivers.base import (
    Driver,
    GuestEvents,
    IncomingSetup,
    Instance,
    MigrationOptions,
    MigrationReport,
    MigrationTarget,
)
from xenia.drivers.qemu_confine import QemuConfinement
from xenia.drivers.qemu_devices import QemuDevices, argv_devices
from xenia.drivers.qemu_instance import QemuInstance
from xenia.errors import AdoptLater, BackendError, InvalidConfig, NotFound, XeniaError
from xenia.hostos import affinity, hostinfo
from xenia.hostos.cpupools import POOL0, CpuPoolTable
from xenia.hostos.peercred import qemu_peer
from xenia.images.hvm import ovmf_paths, ovmf_qemu_args
from xenia.network.manager import NetworkManager
from xenia.paths import MAX_SOCKET_PATH, Paths
from xenia.peers.psk import PSK_FILE
from xenia.qemu import accel as accel_mod
from xenia.qemu import hostfds, platform, stream, vtpm, xldevices
from xenia.qemu.binary import machine_alias, qemu_info
from xenia.qemu.cmdline import RunFiles, build_argv, tcg_params_added
from xenia.qemu.commands import Qmp
from xenia.qemu.process import QemuProcess, pid_matches
from xenia.revert import Revert
from xenia.storage.manager import StorageManager
from xenia.store.base import DomainRecord, Store

log = logging.getLogger(__name__)

# runtime key: {path: dev:inode:ctime} of the channel sockets xeniad bound (qemu/hostfds.py).
BOUND_SOCKETS = "bound_sockets"


def _check_readable(path: str | None, what: str, name: str, key: str) -> None:
    if path is None:
        return
    p = Path(path)
    if not p.is_absolute():
        raise InvalidConfig(
            f"Failed to create domain '{name}': {what} '{path}' is not an absolute path; "
            f"give {key} as a full path"
        )
    if not p.exists():
        raise NotFound(f"Failed to create domain '{name}': {what} '{path}' does not exist; "
                       f"check {key} in the config")
    if not p.is_file():
        raise InvalidConfig(f"Failed to create domain '{name}': {what} '{path}' is not a file")
    if not os.access(p, os.R_OK):
        raise InvalidConfig(f"Failed to create domain '{name}': {what} '{path}' is not readable")


class QemuDriver(Driver):
    types = ("pv", "pvh", "hvm")

    def __init__(self, paths: Paths, store: Store, storage: StorageManager,
                 network: NetworkManager, host_accel: str = "auto",
                 boot_watchdog: int = 0, confinement: QemuConfinement | None = None) -> None:
        self.paths = paths
        self.host_accel = host_accel
        self.boot_watchdog = boot_watchdog  # the default of the domains' boot_watchdog
        self.spice_tls_dir = spice.TLS_DIR  # xeniad --spice-tls-dir
        self.migration_stall = qemu_migrate.STALL_SECONDS  # xeniad --migration-stall-timeout
        self.devices = QemuDevices(store, storage, network)
        self.confinement = confinement or QemuConfinement(paths)
        self.devices.confinement = self.confinement

    def files(self, uuid: str) -> RunFiles:
        return RunFiles(self.paths.domain_run(uuid))

    def hang_timeout(self, record: DomainRecord) -> float | None:
        """The boot watch's hang timeout (0: panics only), or None: no boot watch. Only a
        direct kernel boot is watched: firmware and bootloaders write to the console in
        their own ways (drivers/qemu_bootwatch.py)."""
        cfg = record.config
        if not cfg.kernel:
            return None
        return float(self.boot_watchdog if cfg.boot_watchdog is None else cfg.boot_watchdog)

    def check(self, record: DomainRecord) -> None:
        cfg, name = record.config, record.name
        if cfg.type == "hvm":
            display.check_bootable(cfg)
            display.check_graphics(cfg)
            if display.firmware_kind(cfg) == "ovmf":
                ovmf_paths()  # NotFound with "apt-get install ovmf" when missing
            if cfg.vnc:
                display.vnc_listen(cfg)
        qemu_boot.check_bootloader(cfg)
        if cfg.type in ("pv", "pvh") and not cfg.kernel and not cfg.bootloader:
            raise InvalidConfig(
                f"Failed to create domain '{name}': a {cfg.type} domain boots a kernel directly; "
                "set kernel = \"/path/to/vmlinuz\" (and usually ramdisk) in the config "
                "(`xenia image build tiny` makes one)"
            )
        platform.check(cfg)
        xldevices.check(cfg)
        spice.check_spice(cfg, self.spice_tls_dir)
        if cfg.pool and cfg.pool != POOL0:
            CpuPoolTable(self.devices.store).cpus(cfg.pool)  # NotFound names the pools
        _check_readable(cfg.kernel, "kernel", name, "kernel")
        _check_readable(cfg.ramdisk, "ramdisk", name, "ramdisk")
        total = hostinfo.total_mib()
        if cfg.effective_maxmem > total:
            raise InvalidConfig(
                f"Failed to create domain '{name}': it asks for {cfg.effective_maxmem} MiB "
                f"(maxmem) but the host has only {total} MiB; lower memory/maxmem"
            )
        avail = hostinfo.available_mib()
        if cfg.memory > avail:
            raise InvalidConfig(
                f"Failed to create domain '{name}': it asks for {cfg.memory} MiB but only "
                f"{avail} MiB of host memory are available; lower memory or free some"
            )
        qemu_info()  # raises NotSupported with an install hint when QEMU is missing
        accel_mod.resolve(cfg.accel, self.host_accel)
        files = self.files(record.uuid)
        longest = max(len(str(files.qmp)), len(str(files.console)))
        if longest > MAX_SOCKET_PATH:
            raise InvalidConfig(
                f"Failed to create domain '{name}': the run directory {files.dir} is too long "
                f"for a UNIX socket path ({longest} > {MAX_SOCKET_PATH} bytes); use a "
                "shorter XENIA_ROOT"
            )
        self.devices.check(record)
        for v in range(cfg.effective_maxvcpus):
            text = qemu_cpu.hard_affinity_text(record, v)
            if text is not None:
                affinity.resolve_cpulist(text, doing=f"apply cpus= of '{name}'")

    def prepare(self, record: DomainRecord) -> None:
        self.devices.prepare(record)

    def release(self, record: DomainRecord) -> None:
        self.devices.unplug_host(record)
        self.devices.links.collect(record)  # after its taps: a bridge goes empty
        qemu_cpu.remove_cgroup(record)
        if self.confinement.confined(record):
            self.confinement.release(record)
        # The channel sockets xeniad bound (qemu/hostfds.py); QEMU had only their fds.
        hostfds.remove_sockets(record.runtime.pop(BOUND_SOCKETS, None) or {})

    def discard(self, record: DomainRecord) -> None:
        # Not in release(): a relaunch (on_crash=restart, a reboot into an updated config,
        # `xenia start`) is the same machine, whose UEFI variables and TPM keys must stay.
        with contextlib.suppress(FileNotFoundError):
            self.nvram(record).unlink()
        shutil.rmtree(self.vtpm_dir(record), ignore_errors=True)

    def vtpm_dir(self, record: DomainRecord) -> Path:
        """The state of the domain's vTPM (swtpm's keys and NVRAM)."""
        return self.paths.state / "vtpm" / record.uuid

    def nvram(self, record: DomainRecord) -> Path:
        """The domain's own copy of the UEFI variable store (its NVRAM)."""
        return self.paths.state / "nvram" / f"{record.uuid}_VARS.fd"

    def _hvm_extras(self, record: DomainRecord) -> tuple[list[str], int | None]:
        """Firmware arguments and the VNC display of an hvm domain."""
        cfg = record.config
        if cfg.type != "hvm":
            return [], None
        firmware: list[str] = []
        kind = display.firmware_kind(cfg)
        if kind == "ovmf":
            code, template = ovmf_paths()
            nvram = self.nvram(record)
            if not nvram.exists():
                nvram.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(template, nvram)
            firmware = ovmf_qemu_args(nvram, code)
        elif kind == "path":
            firmware = ["-bios", str(cfg.firmware)]
        vnc = None
        if cfg.vnc and not cfg.nographic:
            taken = {int(r.runtime["vnc_display"]) for r in self.devices.store.list()
                     if r.uuid != record.uuid and "vnc_display" in r.runtime}
            vnc = display.choose_display(cfg, taken)
            host, _ = display.vnc_listen(cfg)
            record.runtime["vnc_display"] = vnc
            record.runtime["vnc"] = f"{host}:{display.VNC_BASE + vnc}"
        return firmware, vnc

    def sched_get(self, record: DomainRecord) -> dict[str, int]:
        return qemu_cpu.sched_get(record)

    def sched_set(self, record: DomainRecord, weight: int | None, cap: int | None) -> None:
        qemu_cpu.sched_set(record, weight, cap)

    async def start(self, record: DomainRecord, events: GuestEvents,
                    incoming: str | None = None) -> Instance:
        """Launch paused. With `incoming` ("defer"), QEMU waits for a migration stream
        (restore, live migration) instead of booting."""
        cfg = record.config
        info = qemu_info()
        choice = accel_mod.resolve(cfg.accel, self.host_accel)
        files = self.files(record.uuid)
        if files.dir.exists():
            raise BackendError(
                f"Failed to start domain '{record.name}': run directory {files.dir} exists "
                "already (a stale domain?)"
            )
        record.runtime["accel"] = choice.name
        async with Revert() as revert:
            # Before the taps: they are made owned by QEMU's uid (it opens them as that).
            await asyncio.to_thread(self.confinement.assign, record)
            revert.add(lambda: asyncio.to_thread(self.confinement.free_uid, record))
            await asyncio.to_thread(self.devices.plug_host, record)
            revert.add(lambda: asyncio.to_thread(self.release, record))
            proc = QemuProcess(record.name, record.uuid, files,
                               qemu_peer(record.runtime).uid)
            revert.add(proc.remove_files)
            inst = QemuInstance(record, proc, events, self.devices, self.hang_timeout(record))
            revert.add(inst.destroy)
            layout, devices = argv_devices(record)
            machine = record.runtime.get("machine") or machine_alias("q35")
            record.runtime["machine"] = machine
            firmware, vnc = self._hvm_extras(record)
            # pygrub: the kernel the guest's disk names (qemu_boot.py), for this boot.
            files.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            cfg = await asyncio.to_thread(qemu_boot.boot_config, record, files.dir)
            added = tcg_params_added(cfg, choice.name)
            if cfg.kernel:
                added += self.devices.links.kernel_params(record)
            tpm: list[str] = []
            if cfg.vtpm:
                who = self.confinement.identity(record)
                sock = await asyncio.to_thread(vtpm.start_swtpm, self.vtpm_dir(record),
                                               files.dir, (who.uid, who.gid))
                revert.add(lambda: vtpm.stop_swtpm(files.dir))
                tpm = vtpm.tpm_args(sock)
            if cfg.pool and cfg.pool != POOL0 and "cpupool" not in record.runtime:
                record.runtime["cpupool"] = cfg.pool
                record.runtime["cpupool_cpus"] = sorted(
                    CpuPoolTable(self.devices.store).cpus(cfg.pool))
            # Serial files and channel sockets outside the run dir: xeniad opens them,
            # QEMU inherits the fds (its user could not open the paths).
            host_fds = await asyncio.to_thread(hostfds.open_host_fds, cfg)
            record.runtime[BOUND_SOCKETS] = hostfds.bound_sockets(cfg)
            if cfg.spice.get("tls_port"):
                # Before the confinement gives QEMU its files: the certificates are some.
                record.runtime[spice.RUNTIME_TLS_DIR] = str(self.spice_tls_dir)
            try:
                argv = build_argv(cfg, uuid=record.uuid, accel=choice.name, files=files,
                                  qemu=info.path, layout=layout, devices=devices,
                                  incoming=incoming, machine=machine, firmware=firmware,
                                  vnc_display=vnc, kernel_params=added, tpm=tpm,
                                  host_fds=host_fds,
                                  spice_tls=record.runtime.get(spice.RUNTIME_TLS_DIR))
                files.dir.mkdir(parents=True, exist_ok=True)  # pygrub and swtpm made it
                nvram = (self.nvram(record) if firmware and self.nvram(record).exists()
                         else None)
                argv = await asyncio.to_thread(self.confinement.prepare, record, files,
                                               nvram, choice.name, argv)
                await proc.launch(argv, jailed=True, pass_fds=list(host_fds.values()))
            finally:
                hostfds.close_host_fds(host_fds)  # QEMU holds its own copies now
            await proc.connect_qmp(inst.on_qmp_event)
            if cfg.vnc and cfg.vncpasswd and vnc is not None:
                # Over QMP: a password on the command line would be in /proc for all.
                await proc.qmp.set_password("vnc", cfg.vncpasswd)
            if cfg.spice and cfg.spicepasswd:
                await proc.qmp.set_password("spice", cfg.spicepasswd)
            assert proc.pid is not None
            await asyncio.to_thread(qemu_cpu.setup_cgroup, record, proc.pid)
            qemu_cpu.pin_threads(record, await inst.devices.vcpu_threads())
            if cfg.effective_maxmem > cfg.memory and incoming is None:
                await proc.qmp.balloon(cfg.memory * 1024 * 1024)
            if incoming is None:  # a boot; a restored or migrated guest booted elsewhere
                inst.watch_boot()
            revert.success()
        record.runtime.update(
            {
                "accel": choice.name,
                "accel_reason": choice.reason,
                "qemu_version": info.version_text,
                "pid": proc.pid,
                # The guest RAM QEMU was given (-m): mem-max cannot go past it.
                "boot_maxmem": cfg.effective_maxmem,
                "vcpu_threads_created": cfg.vcpus,
                # What Xenia put on the kernel command line beyond the config's own.
                "kernel_params_added": added,
            }
        )
        return inst

    async def adopt(self, record: DomainRecord, events: GuestEvents) -> Instance | None:
        proc = QemuProcess(record.name, record.uuid, self.files(record.uuid),
                           qemu_peer(record.runtime).uid)
        if not proc.adopt():
            return None
        # Its QEMU runs: its uid's claim is this xeniad's (also while QMP is retried).
        await asyncio.to_thread(self.confinement.adopt, record)
        inst = QemuInstance(record, proc, events, self.devices, self.hang_timeout(record))
        try:
            await proc.connect_qmp(inst.on_qmp_event)
            status = await proc.qmp.query_status()
        except XeniaError as e:
            await proc.close()
            if proc.pid is None or not pid_matches(proc.pid, record.uuid):
                return None
            # It runs: its record must stay (forgetting it would free its disks and
            # name for a second QEMU); the manager retries.
            raise AdoptLater(f"Failed to adopt '{record.name}': QEMU pid {proc.pid} runs "
                             f"but its QMP fails ({e.message})") from e
        record.runtime["pid"] = proc.pid
        # A guest that went to S3 while no daemon watched sent its SUSPEND to nobody.
        inst.suspended = status == "suspended"
        inst.adopt_watch(running=status == "running")
        return inst

    def host_info(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        try:
            info = qemu_info()
            out["qemu"] = info.path
            out["qemu_version"] = info.version_text
        except XeniaError as e:
            out["qemu"] = None
            out["qemu_error"] = e.message
        choice = accel_mod.resolve("auto", self.host_accel)
        out["accel"] = choice.name
        out["accel_reason"] = choice.reason
        return out

    # -- save, restore, live migration (the QMP side: qemu_migrate.py) ------------------
    @staticmethod
    def _qmp(inst: Instance) -> Qmp:
        assert isinstance(inst, QemuInstance), inst
        return inst.qmp

    async def save(self, inst: Instance, path: Path, offset: int) -> None:
        # QEMU gets a pipe, never the file (qemu_migrate.py): nothing to give it.
        await qemu_migrate.save(self._qmp(inst), path, offset)

    async def restore(self, inst: Instance, path: Path, offset: int) -> None:
        await qemu_migrate.restore(self._qmp(inst), lambda: inst.alive, path, offset)

    async def check_migrate(self, inst: Instance) -> None:
        await qemu_migrate.check_source(self._qmp(inst), inst.record.name)

    async def _give_psk(self, inst: Instance, tls_dir: Path | None) -> list[str]:
        """QEMU reads the migration's PSK file itself (at each TLS handshake)."""
        if tls_dir is None:
            return []
        return await asyncio.to_thread(self.confinement.give_file, inst.record,
                                       tls_dir / PSK_FILE)

    async def migrate(self, inst: Instance, target: MigrationTarget, opts: MigrationOptions,
                      report: MigrationReport) -> None:
        given = await self._give_psk(inst, target.tls_dir)
        try:
            await qemu_migrate.send(self._qmp(inst), target, opts, report,
                                    self.migration_stall)
        finally:
            await asyncio.to_thread(self.confinement.give_back, inst.record, given)

    async def abort_migration(self, inst: Instance, target: MigrationTarget,
                              resume: bool) -> None:
        await qemu_migrate.rollback(self._qmp(inst), target, resume)

    async def accept_migration(self, inst: Instance, setup: IncomingSetup) -> tuple[int, int]:
        await self._give_psk(inst, setup.tls_dir)  # given back with the rest at release
        return await qemu_migrate.accept(self._qmp(inst), setup)

    async def receive_migration(self, inst: Instance, connect_timeout: float) -> None:
        await stream.wait_incoming(self._qmp(inst), lambda: inst.alive,
                                   what=f"receiving {inst.record.name}",
                                   connect_timeout=connect_timeout)

    async def finalize_migration(self, inst: Instance, setup: IncomingSetup) -> None:
        await qemu_migrate.finalize(self._qmp(inst), setup)

    # -- replicated volumes (the QMP side: qemu_replica.py) ------------------------------
    async def attach_replica(self, inst: Instance, link: Any) -> None:
        assert isinstance(link, qemu_replica.ReplicaLink), link
        # QEMU reads the PSK at each TLS handshake (a reconnect, a resync): given for the
        # domain's life, taken back with the rest at release.
        await self._give_psk(inst, link.tls_dir)
        await qemu_replica.attach(self._qmp(inst), link)

    async def replica_status(self, inst: Instance) -> dict[str, dict[str, Any]]:
        return await qemu_replica.status(self._qmp(inst))

    async def detach_replica(self, inst: Instance, vdev: str) -> None:
        await qemu_replica.detach(self._qmp(inst), vdev)

    async def cut_replica(self, inst: Instance, vdev: str) -> None:
        await qemu_replica.cut(self._qmp(inst), vdev)
