"""The typed result of parsing an xl.cfg file: DomainConfig and its device specs.

Everything here is plain data (dataclasses) that round-trips through JSON (`to_dict` /
`from_dict`), because the daemon stores it and `xenia create -n` prints it.
Sizes are in MiB unless a field name says otherwise; `None` means "not given, use the
default" where the default depends on the host or the domain type.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

DOMAIN_TYPES = ("pv", "pvh", "hvm", "container")
# accel=: "auto" probes the host (qemu/accel.py).
ACCELS = ("auto", "kvm", "tcg")
# xl's actions for on_poweroff / on_reboot / on_crash / on_watchdog / on_soft_reset.
ACTIONS = (
    "destroy",
    "restart",
    "rename-restart",
    "preserve",
    "coredump-destroy",
    "coredump-restart",
    "soft-reset",
)


# QEMU's q35 with one socket per vCPU (devices/cpu.py) takes at most 255.
MAX_VCPUS = 255

@dataclass
class DiskSpec:
    """One entry of `disk = [...]`, see xl-disk-configuration(5)."""

    vdev: str  # guest-visible name: xvda, hda, sdb, ...
    target: str | None = None  # path (file, block device) or None for an empty cdrom
    format: str = "raw"  # raw, qcow, qcow2, vhd, qed; "empty" for an empty cdrom
    access: str = "rw"  # rw, ro
    devtype: str = "disk"  # disk, cdrom
    backendtype: str | None = None  # phy, qdisk, tap, standalone
    script: str | None = None
    direct_io_safe: bool = False
    discard: bool | None = None  # None: backend default
    trusted: bool | None = None
    # The spec string as written, for messages and for `block-list`.
    spec: str = ""
    backend: str | None = None  # backend (driver) domain name; None: the host
    specification: str | None = None  # xen, virtio (xl's `specification=`)

    @property
    def readonly(self) -> bool:
        return self.access == "ro"

    @property
    def is_cdrom(self) -> bool:
        return self.devtype == "cdrom"


@dataclass
class RateLimit:
    """`rate=` of a vif: bytes_per_interval bytes every interval_us microseconds."""

    bytes_per_interval: int
    interval_us: int = 50_000

    @property
    def bytes_per_second(self) -> int:
        return self.bytes_per_interval * 1_000_000 // self.interval_us


@dataclass
class VifSpec:
    """One entry of `vif = [...]`, see xl-network-configuration(5)."""

    mac: str | None = None  # None: generated (00:16:3e:xx:xx:xx), then stored
    bridge: str | None = None  # None: xenbr0
    model: str | None = None  # None: virtio for pv/pvh, e1000 for hvm
    type: str | None = None  # ioemu, vif
    vifname: str | None = None
    ip: str | None = None
    script: str | None = None
    backend: str | None = None
    gatewaydev: str | None = None
    rate: RateLimit | None = None
    mtu: int | None = None
    devid: int | None = None
    spec: str = ""
    vlan: str | None = None  # xl's vlan= syntax, e.g. "10p/20"
    trusted: bool | None = None  # trusted / untrusted flag; None: default


@dataclass
class DomainConfig:
    name: str
    type: str = "pv"
    uuid: str | None = None
    memory: int = 128  # MiB, the initial target (xl's default is 128)
    maxmem: int | None = None  # MiB; None: equal to memory
    vcpus: int = 1
    maxvcpus: int | None = None  # None: equal to vcpus
    cpus: str | None = None  # hard affinity, xl CPULIST syntax
    cpus_soft: str | None = None
    # `cpus = ["2", "3-8,^5"]` pins vCPU i to item i; then `cpus` covers them all (their
    # union, or "all" when that needs the host's NUMA layout).
    cpus_per_vcpu: list[str] | None = None
    cpus_soft_per_vcpu: list[str] | None = None
    cpu_weight: int | None = None
    cap: int | None = None

    # Direct kernel boot (pv, pvh; also allowed for hvm).
    kernel: str | None = None
    ramdisk: str | None = None
    cmdline: str | None = None  # if None: built from root + extra
    root: str | None = None
    extra: str | None = None

    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    on_watchdog: str = "destroy"
    on_soft_reset: str = "soft-reset"

    disks: list[DiskSpec] = field(default_factory=list)
    vifs: list[VifSpec] = field(default_factory=list)
    pci: list[str] = field(default_factory=list)

    # HVM (issue 5 wires these; parsed and kept now).
    firmware: str | None = None
    boot: str | None = None
    acpi: bool = True
    serial: list[str] = field(default_factory=list)
    vnc: bool = False
    vnclisten: str | None = None
    vncdisplay: int | None = None
    vncunused: bool = True
    vncpasswd: str | None = None
    sdl: bool = False
    nographic: bool = False
    usb: bool = False
    usbdevice: list[str] = field(default_factory=list)

    # Containers (issue 5).
    rootfs: str | None = None
    init: str | None = None
    # Container confinement (Xenia's own keys, docs/xl-compat.md): capabilities on top of
    # the default set, a process limit (None: the default, 0: none) and the host ids the
    # user namespace maps to ("ID:COUNT" or "UID:GID:COUNT"; None: allocated).
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    pids_limit: int | None = None
    idmap: str | None = None

    # Xenia extensions (documented in docs/xl-compat.md).
    accel: str = "auto"  # auto, kvm, tcg
    machine: str | None = None  # machine profile; None: the default profile for the type
    # Seconds without console output or vCPU progress after which a booting kernel counts
    # as hung (crashed); 0: off; None: the daemon's default (xeniad --boot-watchdog).
    boot_watchdog: int | None = None
    # Start from this memory snapshot ("DOMAIN@SNAPSHOT") instead of booting; the
    # snapshot's config is used, with this config's name (migration/clones.py).
    from_snapshot: str | None = None
    # High availability in a cluster (docs/cluster.md, "High availability"): restarted on
    # another member when its host dies; higher ha_priority first; at most ha_max_restarts
    # failovers (the count lives with the domain's owner key in etcd).
    ha: bool = False
    # Xen's driver_domain: serves disks and NICs of other domains (drivers/qemu_drvdom.py).
    driver_domain: bool = False
    ha_priority: int = 0
    ha_max_restarts: int = 3

    # xl keys applied on KVM (issue 14; docs/xl-compat.md's key table). The RTC: local
    # time instead of UTC, plus an offset in seconds.
    localtime: bool = False
    rtc_timeoffset: int = 0
    viridian: list[str] = field(default_factory=list)  # xl groups, expanded; [] is off
    vga: str | None = None  # stdvga, cirrus, qxl, none; None: stdvga
    videoram: int | None = None  # MiB
    # Extra QEMU arguments (admin only over TCP: docs/security.md).
    device_model_args: list[str] = field(default_factory=list)
    device_model_args_pv: list[str] = field(default_factory=list)
    device_model_args_hvm: list[str] = field(default_factory=list)
    nomigrate: bool = False
    tsc_mode: str | None = None  # default, native, native_paravirt (always_emulate refused)
    smbios: list[str] = field(default_factory=list)  # "KEY=VALUE" as xl.cfg(5)
    acpi_s3: bool = True
    acpi_s4: bool = True
    channel: list[str] = field(default_factory=list)  # xl channel specs, checked
    # The watchdog device on_watchdog watches (Xenia's key; on_watchdog alone picks
    # i6300esb): i6300esb, ib700 or None for none.
    watchdog: str | None = None
    pool: str | None = None  # the cpupool (xenia cpupool-list); None: Pool-0
    vtpm: list[str] = field(default_factory=list)  # xl vtpm specs; at most one (swtpm)
    bootloader: str | None = None  # "pygrub": the kernel comes from the first disk
    bootloader_args: list[str] = field(default_factory=list)
    spice: dict[str, Any] = field(default_factory=dict)  # xl's spice* keys; {}: off
    spicepasswd: str | None = None  # set over QMP, never on QEMU's command line
    # The guest's CPU, NUMA nodes, USB and sound (config/xldevices.py checks them,
    # qemu/xldevices.py makes QEMU's arguments).
    cpuid: list[str] = field(default_factory=list)  # QEMU -cpu settings: "aes=on"
    nestedhvm: bool | None = None  # None: the CPU model's default
    vnuma: list[dict[str, Any]] = field(default_factory=list)  # size, vcpus, distances
    usbctrl: list[dict[str, Any]] = field(default_factory=list)  # devid, version, ports
    usbdev: list[dict[str, Any]] = field(default_factory=list)  # type, controller, port
    usbversion: int | None = None  # usb=1's controller: 1 UHCI, 2 EHCI, 3 xHCI (default)
    soundhw: list[str] = field(default_factory=list)  # hda, ac97, es1370, sb16
    keymap: str | None = None  # the VNC keyboard layout (QEMU's -k)
    p9: list[dict[str, Any]] = field(default_factory=list)  # tag, security_model, path
    # xl's vscsi: pdev, host, channel, target, lun (config/vscsi.py, qemu/vscsi.py)
    vscsi: list[dict[str, Any]] = field(default_factory=list)

    # Where the config came from (file path or "<overrides>"), for messages.
    source: str | None = None

    def effective_cmdline(self) -> str:
        """The kernel command line as xl builds it: cmdline, else "root=<root> <extra>"."""
        if self.cmdline is not None:
            return self.cmdline
        parts = []
        if self.root:
            parts.append(f"root={self.root}")
        if self.extra:
            parts.append(self.extra)
        return " ".join(parts)

    @property
    def effective_maxmem(self) -> int:
        return self.maxmem if self.maxmem is not None else self.memory

    @property
    def effective_maxvcpus(self) -> int:
        return self.maxvcpus if self.maxvcpus is not None else self.vcpus

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DomainConfig:
        """A config from its to_dict() form (the API's, a record's, a save file's).

        Raises TypeError or ValueError for anything to_dict() could not have made: a
        field of the wrong type, a string with a NUL, a list where a mapping belongs. An
        API body is not an xl.cfg file: nothing typed it before."""
        if not isinstance(data, dict):
            raise TypeError(f"a domain config is a JSON object, not {type(data).__name__}")
        data = dict(data)
        disks = [DiskSpec(**_mapping(d, "disks")) for d in _list(data.pop("disks", []), "disks")]
        vifs = []
        for v in _list(data.pop("vifs", []), "vifs"):
            v = dict(_mapping(v, "vifs"))
            rate = v.pop("rate", None)
            vifs.append(VifSpec(rate=RateLimit(**_mapping(rate, "rate")) if rate else None,
                                **v))
        known = {f.name for f in dataclasses.fields(cls)}
        cfg = cls(disks=disks, vifs=vifs, **{k: v for k, v in data.items() if k in known})
        for obj in (cfg, *cfg.disks, *cfg.vifs, *(v.rate for v in cfg.vifs if v.rate)):
            check_types(obj)
        return cfg


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"'{what}' must be a list, got {type(value).__name__}")
    return value


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"each of '{what}' must be an object, got {type(value).__name__}")
    return value


def _type_ok(value: Any, typ: str) -> bool:
    if typ.endswith(" | None"):
        return value is None or _type_ok(value, typ[: -len(" | None")])
    if typ == "str":
        return isinstance(value, str) and "\0" not in value
    if typ == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if typ == "bool":
        return isinstance(value, bool)
    if typ == "list[str]":
        return isinstance(value, list) and all(_type_ok(v, "str") for v in value)
    if typ == "list[dict[str, Any]]":  # checked in full by config/xldevices.py
        return isinstance(value, list) and all(_type_ok(v, "dict[str, Any]") for v in value)
    if typ == "dict[str, Any]":  # spice: its values are checked by devices/spice.py
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return True  # nested dataclasses: built and checked on their own


def check_types(obj: Any) -> None:
    """ValueError unless every field of the dataclass `obj` holds its declared type."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not _type_ok(value, str(f.type)):
            shown = "a string with a NUL" if isinstance(value, str) else type(value).__name__
            raise ValueError(f"'{f.name}' must be {f.type}, got {shown}")
