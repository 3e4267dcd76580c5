"""From parsed xl.cfg values to a checked DomainConfig; the main functions are load_config
and build_config.

Only checks that need no host knowledge happen here (names, numbers, ranges, device
specs); whether a kernel file exists or the host has the CPUs is the engine's business.

Values are read as xl reads them: a number given as a string ("256", "0x100") is a
number, a number given where a string is expected is its decimal text, and a boolean
is any number (0 is false). A value of the wrong type is an InvalidConfig naming the
key, where it was set (file:line:column) and the type expected.

Warnings -- unknown keys, xl keys Xenia ignores, deprecated spellings -- are logged
with `logging.getLogger("xenia.config").warning(...)`, as are those of the disk and vif
parsers; the CLI attaches a handler to print them. They never stop a config loading.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from xenia.config.cpulist import normalize_cpulist, union_cpulists
from xenia.config.diskspec import parse_disk_spec
from xenia.config.extras import notice_xen_names, read_extras
from xenia.config.keys import KEYS, unused_warning
from xenia.config.model import ACCELS, ACTIONS, MAX_VCPUS, DiskSpec, DomainConfig
from xenia.config.names import NAME_RULE, valid_name
from xenia.config.vdev import vdev_number
from xenia.config.vifspec import parse_vif_spec
from xenia.config.xlcfg import Value, apply_overrides, read_config_file
from xenia.config.xldevices import read_devices
from xenia.config.xllexer import number_value
from xenia.containers import caps, limits
from xenia.containers.idmap import parse_request
from xenia.errors import InvalidConfig

log = logging.getLogger("xenia.config")

T = TypeVar("T")

_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\Z")
_BOOT_RE = re.compile(r"[acdn]+\Z")
# The order matters: xl tries "hvm", then "pv", then "pvh", so "p" means pv.
_TYPES = ("hvm", "pv", "pvh", "container")
_BUILDERS = {"hvm": "hvm", "generic": "pv", "linux": "pv"}

_STRINGS = ("kernel", "ramdisk", "cmdline", "root", "extra", "firmware", "vnclisten",
            "vncpasswd", "rootfs", "init", "machine")
_BOOLEANS = ("acpi", "vnc", "vncunused", "sdl", "nographic", "usb", "ha",
             "driver_domain")
_STRING_LISTS = ("serial", "usbdevice")

class _Reader:
    """Typed access to the values, with the key's location in every message."""

    def __init__(self, values: Mapping[str, Value], source: str) -> None:
        self.values = values
        self.source = source
        self.used: set[str] = set()

    def where(self, key: str) -> str:
        locations = getattr(self.values, "locations", {})
        return str(locations[key]) if key in locations else self.source

    def fail(self, key: str, problem: str) -> InvalidConfig:
        return InvalidConfig(f"Failed to load domain config: {self.where(key)}: {problem}")

    def wrong(self, key: str, expected: str) -> InvalidConfig:
        return self.fail(key, f"'{key}' must be {expected}, got {_describe(self.values[key])}")

    def get(self, key: str) -> Value | None:
        self.used.add(key)
        return self.values.get(key)

    def nul(self, key: str) -> InvalidConfig:
        # "\0" or "\x00" in a string: no path, name or option can hold one (QEMU's argv,
        # the kernel's paths), so it is refused here, where the message can say where.
        return self.fail(key, f"'{key}' holds a NUL character (\\0); remove it")

    def string(self, key: str) -> str | None:
        value = self.get(key)
        if isinstance(value, str) and "\0" in value:
            raise self.nul(key)
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, int):
            return str(value)
        raise self.wrong(key, "a string")

    def integer(self, key: str, low: int, high: int | None = None,
                what: str = "an integer") -> int | None:
        value = self.get(key)
        if value is None:
            return None
        number = value if isinstance(value, int) else (
            number_value(value.strip()) if isinstance(value, str) and value.strip() else None)
        if number is None:
            raise self.wrong(key, what)
        if number < low or (high is not None and number > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise self.fail(key, f"'{key}' must be {bound}, got {number}")
        return number

    def boolean(self, key: str) -> bool | None:
        number = self.integer(key, 0, None, "a boolean (0 or 1)")
        return None if number is None else bool(number)

    def choice(self, key: str, choices: Sequence[str]) -> str | None:
        value = self.string(key)
        if value is not None and value not in choices:
            raise self.fail(key, f"'{key}' must be one of {', '.join(choices)}, got '{value}'")
        return value

    def items(self, key: str, single_ok: bool = False) -> list[str] | None:
        """A list of strings (numbers as their text); a lone string too if single_ok."""
        value = self.get(key)
        if value is None:
            return None
        if isinstance(value, str) and "\0" in value or isinstance(value, list) and any(
                isinstance(v, str) and "\0" in v for v in value):
            raise self.nul(key)
        if single_ok and isinstance(value, str):
            return [value]
        if not isinstance(value, list) or any(isinstance(v, list) for v in value):
            raise self.wrong(key, "a list of strings" + (" or a string" if single_ok else ""))
        return [str(v) for v in value]

    def each(self, key: str, parse: Callable[[str], T]) -> list[T]:
        result = []
        for spec in self.items(key) or []:
            try:
                result.append(parse(spec))
            except InvalidConfig as e:
                raise InvalidConfig(f"{e.message} (in {self.where(key)}, '{key}')") from None
        return result


def _describe(value: Value) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int):
        return f"the number {value}"
    return f"the string '{value}'" if len(value) <= 40 else "a string"


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> DomainConfig:
    """Reads, parses and checks an xl.cfg file, with `xl create` style overrides."""
    parsed = read_config_file(path)
    if overrides:
        parsed = apply_overrides(parsed, overrides)
    return build_config(parsed, os.fspath(path))


def build_config(values: Mapping[str, Value], source: str) -> DomainConfig:
    """A checked DomainConfig from parsed values (a ParsedConfig gives locations)."""
    r = _Reader(values, source)
    cfg = DomainConfig(name=_name(r), type=_domain_type(r), source=source)
    uuid = r.string("uuid")
    if uuid is not None:
        if not _UUID_RE.match(uuid):
            raise r.fail("uuid", f"invalid uuid '{uuid}' (expected xxxxxxxx-xxxx-xxxx-xxxx-"
                                 "xxxxxxxxxxxx in hex)")
        cfg.uuid = uuid.lower()
    _memory_and_vcpus(r, cfg)
    cfg.cpu_weight = r.integer("cpu_weight", 1, 65535)
    cfg.cap = r.integer("cap", 0)
    for key in ("on_poweroff", "on_reboot", "on_crash", "on_watchdog", "on_soft_reset"):
        action = r.choice(key, ACTIONS)
        if action is not None:
            setattr(cfg, key, action)
    for key in _STRINGS:
        setattr(cfg, key, r.string(key))
    # xl's older HVM key for the firmware; `firmware` wins when both are set.
    bios = r.choice("bios", ("rombios", "seabios", "ovmf"))
    if bios is not None and cfg.firmware is None:
        cfg.firmware = "seabios" if bios == "rombios" else bios
    for key in _BOOLEANS:
        flag = r.boolean(key)
        if flag is not None:
            setattr(cfg, key, flag)
    for key in _STRING_LISTS:
        setattr(cfg, key, r.items(key, single_ok=True) or [])
    cfg.vncdisplay = r.integer("vncdisplay", 0, 65535 - 5900)
    boot = r.string("boot")
    if boot is not None and not _BOOT_RE.match(boot):
        raise r.fail("boot", f"'boot' must be letters from a, c, d, n, got '{boot}'")
    cfg.boot = boot
    cfg.accel = r.choice("accel", ACCELS) or cfg.accel
    cfg.boot_watchdog = r.integer("boot_watchdog", 0, 86400, "a number of seconds")
    # Xenia: start from a booted snapshot ("DOMAIN@SNAPSHOT", `xenia create --from`).
    cfg.from_snapshot = r.string("from_snapshot")
    cfg.ha_priority = r.integer("ha_priority", -1000, 1000) or 0
    restarts = r.integer("ha_max_restarts", 0, 1000)
    if restarts is not None:
        cfg.ha_max_restarts = restarts
    cfg.disks = _disks(r)
    cfg.vifs = r.each("vif", parse_vif_spec)
    cfg.pci = r.items("pci") or []
    read_extras(r, cfg)
    read_devices(r, cfg)
    _container_keys(r, cfg)
    _warn_unused(r)
    notice_xen_names(cfg, source)
    return cfg


def _name(r: _Reader) -> str:
    name = r.string("name")
    if name is None:
        raise InvalidConfig(f"Failed to load domain config {r.source}: no 'name' given "
                            "(every domain needs name = \"...\")")
    if not valid_name(name):
        raise r.fail("name", f"invalid domain name '{name}' ({NAME_RULE})")
    return name


def _match_type(value: str) -> str | None:
    """xl's prefix match: "h"/"hv"/"hvm" is hvm, "p"/"pv" pv, "pvh" pvh."""
    if value:
        for name in _TYPES:
            if name.startswith(value):
                return name
    return None


def _domain_type(r: _Reader) -> str:
    value = r.string("type")
    dtype = None
    if value is not None:
        dtype = _match_type(value)
        if dtype is None:
            raise r.fail("type", f"invalid domain type '{value}' (expected pv, pvh, hvm "
                                 "or container)")
    builder = r.string("builder")
    if builder is not None:
        # Deprecated since Xen 4.10, but every xm-era config has it.
        matches = [t for b, t in _BUILDERS.items() if builder and b.startswith(builder)]
        if not matches:
            raise r.fail("builder", f"invalid builder '{builder}' (expected hvm or generic)")
        if dtype is not None and dtype != matches[0]:
            raise r.fail("builder", f"builder '{builder}' contradicts type '{value}'")
        dtype = matches[0]
    return dtype or "pv"


def _memory_and_vcpus(r: _Reader, cfg: DomainConfig) -> None:
    memory = r.integer("memory", 1, what="an integer (MiB)")
    if memory is not None:
        cfg.memory = memory
    cfg.maxmem = r.integer("maxmem", 1, what="an integer (MiB)")
    if cfg.maxmem is not None and cfg.maxmem < cfg.memory:
        raise r.fail("maxmem", f"maxmem ({cfg.maxmem}) is below memory ({cfg.memory})")
    # Bounded here, not only by the engine: per-vCPU affinity lists below are read for
    # every vCPU up to maxvcpus.
    vcpus = r.integer("vcpus", 1, MAX_VCPUS)
    if vcpus is not None:
        cfg.vcpus = vcpus
    cfg.maxvcpus = r.integer("maxvcpus", 1, MAX_VCPUS)
    if cfg.maxvcpus is not None and cfg.maxvcpus < cfg.vcpus:
        raise r.fail("maxvcpus", f"maxvcpus ({cfg.maxvcpus}) is below vcpus ({cfg.vcpus})")
    cfg.cpus, cfg.cpus_per_vcpu = _affinity(r, "cpus", cfg.effective_maxvcpus)
    cfg.cpus_soft, cfg.cpus_soft_per_vcpu = _affinity(r, "cpus_soft", cfg.effective_maxvcpus)


def _affinity(r: _Reader, key: str, maxvcpus: int) -> tuple[str | None, list[str] | None]:
    """(CPULIST for the domain, per-vCPU CPULISTs or None) from a string or a list."""
    value = r.get(key)
    if value is None:
        return None, None
    try:
        if isinstance(value, list):
            # Like xl, entries beyond the last vCPU are ignored.
            items = [normalize_cpulist(v) for v in (r.items(key) or [])[:maxvcpus]]
            if not items:
                raise ValueError("empty list")
            return union_cpulists(items), items
        return normalize_cpulist(str(value)), None
    except ValueError as e:
        raise r.fail(key, f"invalid '{key}': {e}") from None


def _container_keys(r: _Reader, cfg: DomainConfig) -> None:
    """cap_add, cap_drop, pids_limit and idmap: checked here, allowed for containers only."""
    for key in ("cap_add", "cap_drop"):
        names = []
        for item in r.items(key, single_ok=True) or []:
            name = "ALL" if key == "cap_drop" and item.strip().upper() == "ALL" else \
                caps.normalize(item)
            if name is None:
                raise r.fail(key, f"'{item}' in '{key}' is not a Linux capability (such as "
                                  "NET_ADMIN or CAP_SYS_PTRACE)")
            if name not in names:
                names.append(name)
        setattr(cfg, key, names)
    cfg.pids_limit = r.integer("pids_limit", 0, limits.MAX_PIDS_LIMIT,
                               "a number of processes (0: no limit)")
    idmap = r.string("idmap")
    if idmap is not None:
        try:
            parse_request(idmap)
        except ValueError as e:
            raise r.fail("idmap", f"invalid 'idmap': {e}") from None
    cfg.idmap = idmap
    if cfg.type != "container":
        for key in ("cap_add", "cap_drop", "pids_limit", "idmap"):
            if r.values.get(key) is not None:
                raise r.fail(key, f"'{key}' is for containers (type = \"container\") only")


def _disks(r: _Reader) -> list[DiskSpec]:
    disks = r.each("disk", parse_disk_spec)
    seen: dict[int | None, DiskSpec] = {}
    for disk in disks:
        number = vdev_number(disk.vdev)
        if number in seen:
            raise r.fail("disk", f"disks '{seen[number].spec}' and '{disk.spec}' use the "
                                 "same vdev")
        seen[number] = disk
    return disks


def _warn_unused(r: _Reader) -> None:
    if not log.isEnabledFor(logging.WARNING):
        return
    unknown = 0
    for key in r.values:
        if key not in r.used:
            # A typo gets the nearest known key; a file of thousands of unknown keys (a
            # hostile one) does not pay a fuzzy match for each.
            unknown += key not in KEYS
            log.warning("%s: %s", r.where(key), unused_warning(key, suggest=unknown <= 20))
