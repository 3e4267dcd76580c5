"""The driver interface: one driver a domain type (qemu for pv/pvh/hvm, container).

A driver starts or adopts an `Instance`; the engine above owns the lifecycle policy (the
DomainManager, and host/actions.py for on_poweroff/on_reboot/on_crash) and tells the
instance what to do. Instances report guest events back through the `GuestEvents`
callback; their device verbs are a DeviceControl (`instance.devices`).

Save, restore and live migration are driver verbs too (Ganeti's hypervisor interface
is the model: MigrateInstance, AcceptInstance, FinalizeMigration): the driver moves the
state of one instance; migration/ orchestrates between hosts (jobs, pre-flight, the
peer protocol, the save file) and never talks to QEMU itself. A driver that cannot
move its domains refuses each verb with NotSupported.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from xenia.config.model import DiskSpec, VifSpec
from xenia.errors import NotSupported, XeniaError
from xenia.hostos.peercred import Peer
from xenia.network.manager import NetworkManager
from xenia.store.base import DomainRecord


def nic_counters(network: NetworkManager, devices: dict[str, str]) -> list[dict[str, Any]]:
    """Per NIC (devid -> host device: tap or veth), the guest-side counters of
    NetworkManager.tap_stats plus "devid" and "device", for /metrics; a device that is
    gone is left out. Blocking (netlink)."""
    out: list[dict[str, Any]] = []
    for devid, dev in devices.items():
        try:
            st = network.tap_stats(dev)
        except XeniaError:
            continue
        out.append({"devid": str(devid), "device": dev, **st})
    return out


def guest_traffic(nics: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """Bytes (received, sent) by a guest over the NICs of nic_counters(), for `xenia top`."""
    rx = tx = 0
    for st in nics:
        rx += st.get("rx_bytes", 0)
        tx += st.get("tx_bytes", 0)
    return rx, tx


# What an instance reports: "poweroff", "reboot", "crash" (guest-initiated), or "exited"
# (the process is gone without us asking).
GuestEvents = Callable[[str, dict[str, Any]], Coroutine[Any, Any, None]]


class DeviceControl:
    """xl's device and resource verbs on a running domain (block-attach, mem-set,
    vcpu-pin, ...), one object per Instance (`instance.devices`). Each verb takes the
    domain's current record, changes the running domain and updates the record for the
    caller to store. A driver that cannot do one refuses it, as these defaults do.
    """

    def __init__(self, record: DomainRecord) -> None:
        self.record = record  # as at start: for its name and type in messages

    def unsupported(self, what: str) -> NotSupported:
        return NotSupported(f"Failed to {what} of '{self.record.name}': its type "
                            f"({self.record.config.type}) does not support it")

    async def set_memory(self, rec: DomainRecord, mib: int) -> None:
        """mem-set: the domain's memory target (balloon for VMs, a limit for containers)."""
        raise self.unsupported("set the memory")

    async def set_vcpus(self, rec: DomainRecord, count: int) -> list[int]:
        """vcpu-set: make `count` vCPUs available; returns the ones added."""
        raise self.unsupported("set the vCPUs")

    async def attach_disk(self, rec: DomainRecord, spec: DiskSpec) -> None:
        raise self.unsupported("attach a disk")

    async def detach_disk(self, rec: DomainRecord, ref: str) -> None:
        raise self.unsupported("detach a disk")

    async def cd_insert(self, rec: DomainRecord, ref: str, target: str, fmt: str) -> None:
        raise self.unsupported("insert a cdrom")

    async def cd_eject(self, rec: DomainRecord, ref: str) -> None:
        raise self.unsupported("eject a cdrom")

    async def attach_vif(self, rec: DomainRecord, vif: VifSpec) -> None:
        raise self.unsupported("attach a network interface")

    async def detach_vif(self, rec: DomainRecord, ref: str) -> None:
        raise self.unsupported("detach a network interface")

    async def screenshot(self) -> bytes:
        raise self.unsupported("take a screenshot")

    async def vcpu_rows(self, rec: DomainRecord) -> list[dict[str, Any]]:
        raise self.unsupported("list the vCPUs")

    async def pin_vcpus(self, rec: DomainRecord, vcpu: str, hard: str) -> None:
        raise self.unsupported("pin the vCPUs")

    async def pci_devices(self) -> list[dict[str, Any]]:
        raise self.unsupported("list the PCI devices")

    async def pci_attach(self, rec: DomainRecord, bdf: str) -> None:
        raise self.unsupported("attach a host PCI device")

    async def pci_detach(self, rec: DomainRecord, bdf: str) -> None:
        raise self.unsupported("detach a host PCI device")

    # xl's usbctrl-*, usbdev-* and usb-list (drivers/qemu_usb.py).
    async def usbctrl_attach(self, rec: DomainRecord, ctrl: dict[str, Any]) -> int:
        raise self.unsupported("attach a USB controller")

    async def usbctrl_detach(self, rec: DomainRecord, devid: int) -> None:
        raise self.unsupported("detach a USB controller")

    async def usbdev_attach(self, rec: DomainRecord, dev: dict[str, Any]) -> dict[str, Any]:
        raise self.unsupported("attach a USB device")

    async def usbdev_detach(self, rec: DomainRecord, controller: int, port: int) -> None:
        raise self.unsupported("detach a USB device")

    async def usb_rows(self, rec: DomainRecord) -> list[dict[str, Any]]:
        raise self.unsupported("list the USB devices")


class Instance(abc.ABC):
    """One running (or paused, or preserved) domain as seen by its driver: its lifecycle
    here, its devices in `devices`."""

    record: DomainRecord
    devices: DeviceControl
    # True while the guest sleeps in S3 (xl suspend); its record stays running.
    suspended: bool = False

    @abc.abstractmethod
    async def resume(self) -> None: ...

    @abc.abstractmethod
    async def pause(self) -> None: ...

    @abc.abstractmethod
    async def power_button(self) -> None:
        """Ask the guest to shut down (ACPI power button)."""

    @abc.abstractmethod
    async def request_reboot(self, force: bool = False) -> None:
        """Ask the guest to reboot (Ctrl-Alt-Del); force: hard reset."""

    @abc.abstractmethod
    async def reset(self) -> None:
        """Restart the guest in place after it stopped (on_*=restart) and run it."""

    @abc.abstractmethod
    async def destroy(self) -> None:
        """Stop at once and remove every runtime file."""

    @abc.abstractmethod
    async def detach(self) -> None:
        """Let go of the instance without stopping it (daemon shutdown)."""

    @abc.abstractmethod
    async def dump_core(self, path: Path) -> None: ...

    @abc.abstractmethod
    def console_path(self) -> Path: ...

    def console_peer(self) -> Peer | None:
        """Who must listen on console_path() (hostos/peercred.py), if its directory is
        the domain's own to change; None: a root-owned one (a container's monitor)."""
        return None

    @abc.abstractmethod
    def console_log(self) -> Path: ...

    @abc.abstractmethod
    def cpu_seconds(self) -> float: ...

    def log_tail(self) -> str:
        """The last lines of the backend's own log, for messages about its death."""
        return ""

    # xl's trigger, sysrq and qemu-monitor-command (drivers/qemu_xlverbs.py); a driver
    # without them refuses.
    async def trigger(self, kind: str) -> None:
        raise NotSupported(f"Failed to send '{kind}' to domain '{self.record.name}': its "
                           "type has no such trigger")

    async def sysrq(self, key: str) -> None:
        raise NotSupported(f"Failed to send sysrq to domain '{self.record.name}': its type "
                           "has no keyboard")

    async def monitor_command(self, command: str) -> str:
        raise NotSupported(f"Failed to run a monitor command in domain "
                           f"'{self.record.name}': its type has no QEMU monitor")

    async def suspend(self) -> None:
        """xl suspend: the guest goes to sleep (S3), with its consent."""
        raise NotSupported(f"Failed to suspend domain '{self.record.name}': its type has "
                           "no sleep state")

    async def wakeup(self) -> None:
        """xl resume: wake a guest from S3."""
        raise NotSupported(f"Failed to resume domain '{self.record.name}': its type has "
                           "no sleep state")

    async def run_state(self) -> str | None:
        """What the backend itself says of the guest ("running", "paused", "shutdown",
        "guest-panicked"), to catch up with what happened while no daemon watched; None
        if it cannot tell."""
        return None

    async def stats(self, rec: DomainRecord) -> dict[str, Any]:
        """Counters for `xenia top` (see DomainViews.stats for the keys)."""
        return {"cpu_time": self.cpu_seconds()}

    @abc.abstractmethod
    def running_now(self) -> bool:
        """True if a vCPU is on a host CPU right now (xl's r), else blocked (b)."""

    @property
    @abc.abstractmethod
    def alive(self) -> bool: ...


@dataclass
class MigrationOptions:
    """How to live-migrate (xl migrate's options; the API's request body)."""

    host: str
    copy_storage: bool = False
    downtime_ms: int | None = None
    bandwidth_mibs: int | None = None
    postcopy: bool = False
    auto_converge: bool = False
    tls: bool = True


@dataclass
class MigrationTarget:
    """Where a migration goes: what the destination prepared for this one."""

    host: str
    port: int  # the destination QEMU's migration listener
    nbd_port: int | None = None  # its NBD server, with --copy-storage
    tls_dir: Path | None = None  # the one-time PSK (peers/psk.py), None: no TLS
    psk_identity: str = ""
    name: str = ""  # unique among this domain's migrations: names QEMU objects
    disks: list[str] = field(default_factory=list)  # vdevs to copy (copy_storage)


@dataclass
class IncomingSetup:
    """What a destination listens for (the source's prepare request)."""

    name: str  # unique among migrations: names QEMU objects
    listen_host: str
    copy_storage: bool = False
    tls_dir: Path | None = None
    caps: dict[str, bool] | None = None
    disks: list[str] = field(default_factory=list)  # vdevs to receive (copy_storage)


class MigrationReport(Protocol):
    """What a running migration reports to (migration/sender.py's MigrationJob)."""

    domain: str
    status: str
    progress: dict[str, Any]
    downtime_ms: int | None
    downtime_limit_ms: int | None
    total_ms: int | None


class Driver(abc.ABC):
    types: tuple[str, ...] = ()

    @abc.abstractmethod
    def check(self, record: DomainRecord) -> None:
        """CheckPrereq: raise a XeniaError if the domain cannot start here. No side effects.

        Blocking (it may run qemu-img); the manager calls it in a worker thread.
        """

    @abc.abstractmethod
    def prepare(self, record: DomainRecord) -> None:
        """Fill in generated parts of the record (MACs, device placement) once, at create."""

    @abc.abstractmethod
    def release(self, record: DomainRecord) -> None:
        """Remove the host-side parts of a domain whose process is gone (taps, cgroups);
        what the domain keeps across a restart of its process stays. Blocking."""

    @abc.abstractmethod
    def discard(self, record: DomainRecord) -> None:
        """Remove what a domain keeps across restarts of its process (firmware variables,
        vTPM state), once the domain is gone for good. Blocking."""

    @abc.abstractmethod
    async def start(self, record: DomainRecord, events: GuestEvents,
                    incoming: str | None = None) -> Instance:
        """Build the domain paused; on any failure leave nothing behind.

        `incoming`: wait for a saved/migrated state instead of booting (VMs only).
        """

    @abc.abstractmethod
    async def adopt(self, record: DomainRecord, events: GuestEvents) -> Instance | None:
        """Re-attach to a domain started earlier; None if it no longer runs."""

    @abc.abstractmethod
    def host_info(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def sched_get(self, record: DomainRecord) -> dict[str, int]:
        """{"weight", "cap"} as xl's credit scheduler shows them."""

    @abc.abstractmethod
    def sched_set(self, record: DomainRecord, weight: int | None, cap: int | None) -> None: ...

    # -- save, restore, live migration ----------------------------------------------------
    def _cannot_move(self, inst: Instance, what: str) -> NotSupported:
        rec = inst.record
        return NotSupported(f"Failed to {what} '{rec.name}': its type ({rec.config.type}) "
                            "does not support it")

    async def save(self, inst: Instance, path: Path, offset: int) -> None:
        """Stop the guest and write its state into `path` from byte `offset` on; the
        guest stays stopped. On failure it runs on as it did."""
        raise self._cannot_move(inst, "save the state of")

    async def restore(self, inst: Instance, path: Path, offset: int) -> None:
        """Load the state saved at `offset` of `path` into an instance started with
        `incoming` (it stays paused)."""
        raise self._cannot_move(inst, "restore the state of")

    async def check_migrate(self, inst: Instance) -> None:
        """Source pre-flight: raise if the instance cannot start a migration now."""
        raise self._cannot_move(inst, "migrate")

    async def migrate(self, inst: Instance, target: MigrationTarget, opts: MigrationOptions,
                      report: MigrationReport) -> None:
        """Source: send the domain's state (and with copy_storage its disks) to `target`.
        Returns once all of it is there and the guest is stopped here; on failure the
        guest runs here as before."""
        raise self._cannot_move(inst, "migrate")

    async def abort_migration(self, inst: Instance, target: MigrationTarget,
                              resume: bool) -> None:
        """Source, after migrate() returned but the destination did not take the domain
        over: undo what is left of the migration and, if `resume`, run the guest here
        again."""
        raise self._cannot_move(inst, "migrate")

    async def accept_migration(self, inst: Instance, setup: IncomingSetup) -> tuple[int, int]:
        """Destination: on an instance started with `incoming`, listen for the stream
        (and with copy_storage serve its disks over NBD); returns (port, NBD port)."""
        raise self._cannot_move(inst, "receive")

    async def receive_migration(self, inst: Instance, connect_timeout: float) -> None:
        """Destination: until the whole state is here (it stays paused)."""
        raise self._cannot_move(inst, "receive")

    async def finalize_migration(self, inst: Instance, setup: IncomingSetup) -> None:
        """Destination, once the source handed the domain over and it runs here: end
        the NBD export and TLS, and tell the network where the guest is now."""
        raise self._cannot_move(inst, "receive")

    # -- replicated volumes (migration/replication.py) -----------------------------------
    async def attach_replica(self, inst: Instance, link: Any) -> None:
        """Mirror a disk into its replica (a drivers.qemu_replica.ReplicaLink) with every
        write synchronous from now on; the initial copy runs in the background."""
        raise NotSupported(f"Failed to replicate a disk of '{inst.record.name}': its "
                           "domain type keeps no replicated disks")

    async def replica_status(self, inst: Instance) -> dict[str, dict[str, Any]]:
        """{vdev: {"state", "progress", "error"}} of the disks being mirrored."""
        return {}

    async def detach_replica(self, inst: Instance, vdev: str) -> None:
        """Stop mirroring `vdev` (for a resync to another host)."""
        return None

    async def cut_replica(self, inst: Instance, vdev: str) -> None:
        """Drop the connection to `vdev`'s replica at once (it went silent): the volume
        is degraded, the guest's writes go on locally."""
        return None
