"""The xl keys for the machine's platform (clock, firmware tables, display, channels,
watchdog, extra QEMU arguments); the main function is read_extras.

Only the values are checked here; qemu/platform.py turns them into QEMU arguments.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from xenia.config.model import DomainConfig
from xenia.config.xlcfg import Value
from xenia.errors import InvalidConfig

T = TypeVar("T")
log = logging.getLogger("xenia.config")


class Reader(Protocol):
    """What read_extras needs of config/build.py's typed reader."""

    values: Mapping[str, Value]

    def fail(self, key: str, problem: str) -> InvalidConfig: ...
    def wrong(self, key: str, expected: str) -> InvalidConfig: ...
    def get(self, key: str) -> Value | None: ...
    def string(self, key: str) -> str | None: ...
    def integer(self, key: str, low: int, high: int | None = None,
                what: str = "an integer") -> int | None: ...
    def boolean(self, key: str) -> bool | None: ...
    def choice(self, key: str, choices: Sequence[str]) -> str | None: ...
    def items(self, key: str, single_ok: bool = False) -> list[str] | None: ...
    def each(self, key: str, parse: Callable[[str], T]) -> list[T]: ...

# xl's viridian groups (xl.cfg(5)); "defaults" is what viridian=1 means.
VIRIDIAN_GROUPS = ("base", "freq", "time_ref_count", "reference_tsc",
                   "hcall_remote_tlb_flush", "apic_assist", "crash_ctl", "stimer",
                   "hcall_ipi", "ex_processor_masks", "no_vp_limit", "cpu_hotplug")
VIRIDIAN_DEFAULTS = ("base", "freq", "time_ref_count", "apic_assist", "crash_ctl")
VGAS = ("stdvga", "cirrus", "qxl", "none")
TSC_MODES = ("default", "always_emulate", "native", "native_paravirt")
WATCHDOGS = ("i6300esb", "ib700", "none")
IMAGE_COMPRESSION = ("auto_glz", "auto_lz", "quic", "glz", "lz", "off")
STREAMING_VIDEO = ("filter", "all", "off")
MAX_SERIALS = 4  # the PC's four legacy ports, ttyS0-ttyS3; ttyS0 is the console
# xl's smbios keys -> (SMBIOS type, QEMU's field). QEMU builds no battery table (type 22).
SMBIOS_FIELDS = {
    "bios_vendor": (0, "vendor"), "bios_version": (0, "version"),
    "system_manufacturer": (1, "manufacturer"), "system_product_name": (1, "product"),
    "system_version": (1, "version"), "system_serial_number": (1, "serial"),
    "baseboard_manufacturer": (2, "manufacturer"), "baseboard_product_name": (2, "product"),
    "baseboard_version": (2, "version"), "baseboard_serial_number": (2, "serial"),
    "baseboard_asset_tag": (2, "asset"), "baseboard_location_in_chassis": (2, "location"),
    "enclosure_manufacturer": (3, "manufacturer"), "enclosure_serial_number": (3, "serial"),
    "enclosure_asset_tag": (3, "asset"), "oem": (11, "value"),
}
_CHANNEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
# At most 18 digits: int() refuses a decimal string past 4,300 digits with a ValueError.
_SIGNED_RE = re.compile(r"\s*-?\d{1,18}\s*\Z")


@dataclass(frozen=True)
class ChannelSpec:
    """One `channel = [...]` entry: a virtio-serial port the guest sees by name."""

    name: str
    connection: str  # "pty" (a socket in the run directory) or "socket"
    path: str | None = None  # socket: where QEMU listens


def parse_channel(spec: str) -> ChannelSpec:
    """xl.cfg(5)'s CHANNEL_SPEC_STRING: name=, connection=pty|socket, path=, backend=."""
    opts: dict[str, str] = {}
    for part in spec.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or key not in ("name", "connection", "path", "backend"):
            raise InvalidConfig(f"Failed to parse channel '{spec}': unknown option '{part}' "
                                "(name=, connection=pty|socket, path=)")
        opts[key] = value
    name, connection = opts.get("name", ""), opts.get("connection", "")
    if not _CHANNEL_NAME_RE.match(name):
        raise InvalidConfig(f"Failed to parse channel '{spec}': name= must be letters, "
                            "digits, '.', '_' or '-' (such as org.example.agent.0)")
    if opts.get("backend", "0") not in ("0", "Domain-0"):
        raise InvalidConfig(f"Failed to parse channel '{spec}': the backend is always the "
                            "host (there are no driver domains)")
    if connection not in ("pty", "socket"):
        raise InvalidConfig(f"Failed to parse channel '{spec}': connection= must be pty or "
                            "socket")
    path = opts.get("path")
    if connection == "socket" and (not path or not path.startswith("/")):
        raise InvalidConfig(f"Failed to parse channel '{spec}': connection=socket needs an "
                            "absolute path=")
    return ChannelSpec(name, connection, path if connection == "socket" else None)


def xen_device_names(cfg: DomainConfig) -> dict[str, str]:
    """Word -> replacement for Xen PV device names in a kernel command line: the console
    hvc0 is ttyS0 here, and `root=/dev/xvdXN` the virtio disk the guest calls vdYN (the
    xvd disks in config order are vda, vdb, ...)."""
    names = {"console=hvc0": "console=ttyS0"}
    xvd = [d.vdev for d in cfg.disks if d.vdev.startswith("xvd") and not d.is_cdrom]
    for i, vdev in enumerate(xvd[:26]):
        names[f"root=/dev/{vdev}"] = f"root=/dev/vd{chr(ord('a') + i)}"
    return names


def translate_xen_names(words: Sequence[str], cfg: DomainConfig) -> list[str]:
    """`words` with Xen PV device names (xen_device_names) in Xenia's terms."""
    names = xen_device_names(cfg)
    out = []
    for word in words:
        m = re.fullmatch(r"(root=/dev/xvd[a-z]+)(\d*)", word)
        if m and m.group(1) in names:
            word = names[m.group(1)] + m.group(2)
        out.append(names.get(word, word))
    return out


def read_extras(r: Reader, cfg: DomainConfig) -> None:
    """Reads the platform keys of `r` into `cfg`."""
    serial = r.values.get("serial")
    if isinstance(serial, list) and len(serial) > MAX_SERIALS:
        raise r.fail("serial", f"at most {MAX_SERIALS} serial ports (ttyS0-ttyS3)")
    cfg.pool = r.string("pool")
    _spice(r, cfg)
    cfg.bootloader = r.string("bootloader")
    cfg.bootloader_args = r.items("bootloader_args", single_ok=True) or []
    cfg.vtpm = r.items("vtpm") or []
    if len(cfg.vtpm) > 1:
        raise r.fail("vtpm", "one vTPM a domain (swtpm): give one entry")
    for spec in cfg.vtpm:
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, _, value = part.partition("=")
            if key == "backend" and value not in ("0", "Domain-0"):
                raise r.fail("vtpm", "the vTPM's backend is always the host (swtpm)")
            if key not in ("backend", "uuid"):
                raise r.fail("vtpm", f"unknown vtpm option '{part}' (backend=, uuid=)")
    cfg.localtime = bool(r.boolean("localtime"))
    cfg.rtc_timeoffset = _signed(r, "rtc_timeoffset")
    cfg.viridian = _viridian(r)
    vga = r.choice("vga", VGAS)
    stdvga = r.boolean("stdvga")
    if vga is None and stdvga is not None:
        vga = "stdvga" if stdvga else "cirrus"  # xl: stdvga=0 is the Cirrus card
    cfg.vga = vga
    cfg.videoram = r.integer("videoram", 1, 512, "a number of MiB")
    for key in ("device_model_args", "device_model_args_pv", "device_model_args_hvm"):
        setattr(cfg, key, r.items(key) or [])
    cfg.nomigrate = bool(r.boolean("nomigrate"))
    tsc = r.get("tsc_mode")
    if isinstance(tsc, int) and 0 <= tsc < len(TSC_MODES):
        tsc = TSC_MODES[tsc]  # xl takes the modes' numbers too
    if tsc is not None:
        if tsc not in TSC_MODES:
            raise r.fail("tsc_mode", f"'tsc_mode' must be one of {', '.join(TSC_MODES)}")
        if tsc == "always_emulate":
            raise r.fail("tsc_mode", "tsc_mode 'always_emulate' is not possible on KVM (it "
                                     "cannot trap every RDTSC of a guest); use 'default'")
    cfg.tsc_mode = tsc if isinstance(tsc, str) else None
    cfg.smbios = _smbios(r)
    for key in ("acpi_s3", "acpi_s4"):
        flag = r.boolean(key)
        if flag is not None:
            setattr(cfg, key, flag)
    cfg.channel = r.items("channel") or []
    names = [c.name for c in r.each("channel", parse_channel)]
    if len(set(names)) != len(names):
        raise r.fail("channel", "two channels have the same name=")
    watchdog = r.choice("watchdog", WATCHDOGS)
    if watchdog is None and r.values.get("on_watchdog") is not None:
        watchdog = "i6300esb"
    cfg.watchdog = None if watchdog == "none" else watchdog


def _spice(r: Reader, cfg: DomainConfig) -> None:
    """xl's spice keys into cfg.spice (empty: off) and cfg.spicepasswd."""
    keys: dict[str, Any] = {
        "port": r.integer("spiceport", 1, 65535),
        "tls_port": r.integer("spicetls_port", 1, 65535),
        "host": r.string("spicehost"),
        "disable_ticketing": r.boolean("spicedisable_ticketing"),
        "agent_mouse": r.boolean("spiceagent_mouse"),
        "vdagent": r.boolean("spicevdagent"),
        "clipboard_sharing": r.boolean("spice_clipboard_sharing"),
        "usbredirection": r.integer("spiceusbredirection", 0, 16),
        "image_compression": r.choice("spice_image_compression", IMAGE_COMPRESSION),
        "streaming_video": r.choice("spice_streaming_video", STREAMING_VIDEO),
    }
    cfg.spicepasswd = r.string("spicepasswd")
    if r.boolean("spice"):
        cfg.spice = {"enabled": True, **{k: v for k, v in keys.items() if v is not None}}


def _signed(r: Reader, key: str) -> int:
    """A number that may be negative: xl reads it with strtol, so "-3600" works."""
    value = r.get(key)
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _SIGNED_RE.match(value):
        return int(value)
    raise r.wrong(key, "a number of seconds (may be negative)")


def _viridian(r: Reader) -> list[str]:
    value = r.get("viridian")
    if value is None:
        return []
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        # Not int() of the text: a string of 5,000 digits would raise a ValueError.
        on = bool(value) if isinstance(value, int) else bool(value.strip().strip("0"))
        return list(VIRIDIAN_DEFAULTS) if on else []
    groups: list[str] = []
    for item in r.items("viridian", single_ok=True) or []:
        name = item.strip()
        drop = name.startswith("!")
        name = name.lstrip("!")
        expanded = (VIRIDIAN_DEFAULTS if name == "defaults" else VIRIDIAN_GROUPS
                    if name == "all" else (name,))
        for group in expanded:
            if group not in VIRIDIAN_GROUPS:
                raise r.fail("viridian", f"unknown viridian group '{name}' (one of "
                                         f"{', '.join(VIRIDIAN_GROUPS)}, defaults, all)")
            if drop and group in groups:
                groups.remove(group)
            elif not drop and group not in groups:
                groups.append(group)
    return groups


def _smbios(r: Reader) -> list[str]:
    items = r.items("smbios") or []
    for item in items:
        key, sep, _ = item.partition("=")
        key = key.strip()
        if key.startswith("battery_"):
            raise r.fail("smbios", f"'{key}': QEMU builds no SMBIOS battery table (type 22)")
        if not sep or key not in SMBIOS_FIELDS:
            raise r.fail("smbios", f"unknown smbios entry '{item}' (KEY=VALUE, KEY one of "
                                   f"{', '.join(SMBIOS_FIELDS)})")
    return items


def notice_xen_names(cfg: DomainConfig, where: str) -> None:
    """Logs a notice when the kernel command line names Xen PV devices Xenia translates."""
    words = cfg.effective_cmdline().split()
    changed = [f"{a} -> {b}" for a, b in zip(words, translate_xen_names(words, cfg), strict=True)
               if a != b]
    if changed and (cfg.kernel or cfg.bootloader) and cfg.type != "container":
        log.warning("%s: notice: Xen device names translated for KVM: %s", where,
                    ", ".join(changed))
