"""QEMU arguments for the xl platform keys: RTC, SMBIOS, ACPI sleep states, Hyper-V
enlightenments, TSC, the watchdog, extra serial ports, virtio-serial channels and
`device_model_args`; the main function is platform_argv.

Every device is given in QEMU's JSON form. The legacy options left (-rtc, -smbios,
-chardev, -global) carry either fixed words or user strings escaped with escape_opt (a
comma doubled), so a value cannot add an option of its own.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from xenia.config.extras import SMBIOS_FIELDS, VGAS, ChannelSpec, parse_channel
from xenia.config.model import DomainConfig
from xenia.errors import InvalidConfig
from xenia.qemu.hostfds import HostFds
from xenia.qemu.opts import escape_opt

# Fixed places on pcie.0 (qemu/cmdline.py names the others): 0x1a the virtio-serial
# controller of the channels, 0x1b the i6300esb watchdog.
CHANNEL_ADDR = "0x1a"
WATCHDOG_ADDR = "0x1b"

# xl viridian group -> QEMU's hv-* properties of the CPU.
_HV_FLAGS = {
    "base": ("hv-relaxed", "hv-vpindex", "hv-spinlocks=0x1fff"),
    "freq": ("hv-frequencies",),
    "time_ref_count": ("hv-time",),
    "reference_tsc": ("hv-time",),
    "hcall_remote_tlb_flush": ("hv-tlbflush",),
    "apic_assist": ("hv-vapic",),
    "crash_ctl": ("hv-crash",),
    "stimer": ("hv-synic", "hv-stimer"),
    "hcall_ipi": ("hv-ipi",),
    "ex_processor_masks": (),  # implied by hv-tlbflush/hv-ipi in QEMU
    "no_vp_limit": (),
    "cpu_hotplug": (),
}


def _j(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def cpu_flags(cfg: DomainConfig, accel: str) -> str:
    """What to add to -cpu: Hyper-V enlightenments and an invariant TSC. Both are KVM
    features (QEMU's TCG does not expose them), so under TCG nothing is added."""
    if accel != "kvm":
        return ""
    flags: list[str] = []
    for group in cfg.viridian:
        flags += [f for f in _HV_FLAGS[group] if f not in flags]
    if cfg.tsc_mode == "native":
        flags.append("invtsc=on")
    return "".join("," + (f if "=" in f else f + "=on") for f in flags)


def rtc_arg(cfg: DomainConfig, now: dt.datetime | None = None) -> list[str]:
    """-rtc: UTC or local time, moved by rtc_timeoffset seconds."""
    if not cfg.localtime and not cfg.rtc_timeoffset:
        return []
    if not cfg.rtc_timeoffset:
        return ["-rtc", "base=localtime"]
    now = now or dt.datetime.now(dt.UTC)
    if cfg.localtime:
        now = now.astimezone()
    base = (now + dt.timedelta(seconds=cfg.rtc_timeoffset)).strftime("%Y-%m-%dT%H:%M:%S")
    return ["-rtc", f"base={base}"]


def smbios_args(cfg: DomainConfig) -> list[str]:
    # A key given twice: the last one wins (one key=value each in -smbios, as QEMU
    # reads an option's keys once; the fuzz found `vendor=,vendor=`).
    fields: dict[int, dict[str, str]] = {}
    for item in cfg.smbios:
        key, _, value = item.partition("=")
        kind, name = SMBIOS_FIELDS[key.strip()]
        fields.setdefault(kind, {})[name] = escape_opt(value)
    return [a for kind in sorted(fields)
            for a in ("-smbios", ",".join([f"type={kind}"] + [f"{k}={v}" for k, v in
                                                              fields[kind].items()]))]


def check_values(cfg: DomainConfig) -> None:
    """The platform values a config from the API carries unparsed (config/extras.py checks
    a file's): each must be one this module turns into QEMU arguments."""
    fail = f"Failed to create domain '{cfg.name}'"
    problems = []
    if cfg.vga is not None and cfg.vga not in VGAS:
        problems.append(f"vga '{cfg.vga}' (one of {', '.join(VGAS)})")
    problems += [f"viridian group '{g}'" for g in cfg.viridian if g not in _HV_FLAGS]
    problems += [f"smbios entry '{e}'" for e in cfg.smbios
                 if e.partition("=")[0].strip() not in SMBIOS_FIELDS or "=" not in e]
    if cfg.watchdog not in (None, "i6300esb", "ib700"):
        problems.append(f"watchdog '{cfg.watchdog}' (i6300esb or ib700)")
    if cfg.tsc_mode not in (None, "default", "native", "native_paravirt"):
        problems.append(f"tsc_mode '{cfg.tsc_mode}'")
    if abs(cfg.rtc_timeoffset) > 100 * 366 * 86400:
        problems.append(f"rtc_timeoffset {cfg.rtc_timeoffset} (more than 100 years)")
    if cfg.videoram is not None and not 1 <= cfg.videoram <= 512:
        problems.append(f"videoram {cfg.videoram} (1 to 512 MiB)")
    if problems:
        raise InvalidConfig(f"{fail}: unknown or bad {'; '.join(problems)}")


def check(cfg: DomainConfig) -> None:
    """What must hold on this host before QEMU starts: QEMU unlinks whatever sits at a
    socket path it listens on, so a channel's path= must be free or a socket; a serial
    file must be a plain file (it is appended to, never truncated) in an existing
    directory. Runs as part of the driver's check, before anything is started."""
    check_values(cfg)
    fail = f"Failed to create domain '{cfg.name}'"
    for spec in cfg.serial[1:]:
        if spec in ("pty", "vc", "null", "none"):
            continue
        path = Path(spec[5:]) if spec.startswith("file:") and spec[5:].startswith("/") else None
        if path is None:
            raise InvalidConfig(f"{fail}: serial '{spec}' is not supported (pty, file:/PATH, "
                                "null, none)")
        if not path.parent.is_dir() or (path.exists() and not path.is_file()):
            raise InvalidConfig(f"{fail}: serial file '{path}' must be a file in an existing "
                                "directory")
    for c in channels(cfg):
        if c.path is None:
            continue
        p = Path(c.path)
        if not p.parent.is_dir():
            raise InvalidConfig(f"{fail}: the directory of channel '{c.name}''s path "
                                f"'{p}' does not exist")
        if p.exists() and not p.is_socket():
            raise InvalidConfig(f"{fail}: channel '{c.name}''s path '{p}' exists and is not "
                                "a socket (QEMU would replace it); choose a free path")


def serial_ports(cfg: DomainConfig, run_dir: Path, fds: HostFds) -> list[str]:
    """Serial ports after the console (serial[1:], checked by config/extras.py and
    `check`): pty (a socket in the run directory, serialN.sock), file:PATH (the fd
    xeniad opened, `fds`, as fd set N; qemu/hostfds.py), null, none."""
    argv: list[str] = []
    for i, spec in enumerate(cfg.serial[1:], start=1):
        chardev = f"serial{i}"
        if spec in ("pty", "vc"):
            path = escape_opt(str(run_dir / f"serial{i}.sock"))
            argv += ["-chardev", f"socket,id={chardev},path={path},server=on,wait=off"]
        elif spec.startswith("file:") and chardev in fds:
            argv += ["-add-fd", f"fd={int(fds[chardev])},set={i}",
                     "-chardev", f"file,id={chardev},path=/dev/fdset/{i},append=on"]
        elif spec.startswith("file:"):  # an unconfined QEMU opens the path itself
            argv += ["-chardev", f"file,id={chardev},path={escape_opt(spec[5:])},append=on"]
        elif spec == "null":
            argv += ["-chardev", f"null,id={chardev}"]
        else:
            continue  # none
        argv += ["-device", _j({"driver": "isa-serial", "id": f"serial{i}dev",
                                "chardev": chardev, "index": i})]
    return argv


def channels(cfg: DomainConfig) -> list[ChannelSpec]:
    return [parse_channel(c) for c in cfg.channel]


def channel_path(run_dir: Path, index: int, spec: ChannelSpec) -> Path:
    """Where QEMU listens for channel `index`: its path=, or a socket in the run dir."""
    return Path(spec.path) if spec.path else run_dir / f"channel{index}.sock"


def channel_args(cfg: DomainConfig, run_dir: Path, fds: HostFds) -> list[str]:
    """The virtio-serial channels: a socket QEMU listens on in the run dir, or the one
    xeniad bound at path= and passed as a listening fd (`fds`; qemu/hostfds.py)."""
    specs = channels(cfg)
    if not specs and not cfg.spice.get("vdagent"):
        return []
    argv = ["-device", _j({"driver": "virtio-serial-pci", "id": "vser0", "bus": "pcie.0",
                           "addr": CHANNEL_ADDR})]
    for i, spec in enumerate(specs):
        if f"channel{i}" in fds:
            where = f"fd={int(fds[f'channel{i}'])}"
        else:
            where = f"path={escape_opt(str(channel_path(run_dir, i, spec)))}"
        argv += ["-chardev", f"socket,id=channel{i},{where},server=on,wait=off",
                 "-device", _j({"driver": "virtserialport", "id": f"channel{i}dev",
                                "bus": "vser0.0", "chardev": f"channel{i}",
                                "name": spec.name})]
    return argv


def watchdog_args(cfg: DomainConfig) -> list[str]:
    """The watchdog device; when it fires QEMU pauses the guest and reports WATCHDOG,
    and xeniad applies on_watchdog."""
    if cfg.watchdog is None:
        return []
    if cfg.watchdog == "ib700":
        dev = {"driver": "ib700", "id": "watchdog0"}
    else:
        dev = {"driver": "i6300esb", "id": "watchdog0", "bus": "pcie.0", "addr": WATCHDOG_ADDR}
    return ["-device", _j(dev), "-action", "watchdog=pause"]


def acpi_args(cfg: DomainConfig) -> list[str]:
    """S3/S4 as xl's acpi_s3/acpi_s4 (q35's ICH9 LPC offers both by default)."""
    argv = []
    if not cfg.acpi_s3:
        argv += ["-global", "ICH9-LPC.disable_s3=1"]
    if not cfg.acpi_s4:
        argv += ["-global", "ICH9-LPC.disable_s4=1"]
    return argv


def dm_args(cfg: DomainConfig) -> list[str]:
    """device_model_args, then the _hvm or _pv ones (pvh counts as pv, as in xl)."""
    own = cfg.device_model_args_hvm if cfg.type == "hvm" else cfg.device_model_args_pv
    return list(cfg.device_model_args) + list(own)


def platform_argv(cfg: DomainConfig, run_dir: Path, fds: HostFds | None = None) -> list[str]:
    """Everything above but the -cpu flags and device_model_args (which go last)."""
    fds = fds or {}
    return (rtc_arg(cfg) + smbios_args(cfg) + acpi_args(cfg) + watchdog_args(cfg)
            + serial_ports(cfg, run_dir, fds) + channel_args(cfg, run_dir, fds))
