"""A reader of QEMU's command line as QEMU itself splits it, for tests that prove no user
string adds an option or a key Xenia did not mean.

`parse_argv` walks an argv the way qemu-system's main loop does (each option takes no
argument or exactly one), and reads each argument by the option's syntax:

* JSON (`-device`, `-blockdev`, `-netdev`, `-object` starting with '{'): json.loads;
* QemuOpts / keyval (`-machine`, `-vnc`, `-chardev`, `-name`, ...): util/qemu-option.c's
  get_opt_name_value: items split at single commas, ",," a comma inside a value; an
  item without '=' is the implied key's value when it comes first, else a flag
  (`noX` = X=off); the implied first item is cut at the first '=' or ',' like QEMU's
  strcspn(params, "=,"), so "a=b" there is the key a;
* plain (`-kernel`, `-append`, `-pidfile`, ...): one value, never split.

`check_argv` adds what Xenia means: every option known, every key in the option's set
(and, for JSON, the driver's), no key twice, and where Xenia's values are only numbers,
addresses or fixed words (`-spice`, `-numa`, `-fsdev`, `-audiodev`, `-add-fd`, `-k`),
each value of that form: a user string that slipped in whole under a known key fails.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Options without an argument.
FLAGS = frozenset({"-nodefaults", "-no-user-config", "-S", "-daemonize"})
# Options whose argument QEMU takes whole (qdict_put_str / a plain string).
PLAIN = frozenset({"-uuid", "-kernel", "-initrd", "-append", "-bios", "-incoming",
                   "-pidfile", "-D", "-cpu", "-accel", "-display", "-k"})
JSON_OPTS = frozenset({"-device", "-blockdev", "-netdev", "-object"})
# option -> (implied first key or None, the keys Xenia means)
LEGACY: dict[str, tuple[str | None, frozenset[str]]] = {
    "-name": ("guest", frozenset({"guest", "debug-threads"})),
    "-machine": ("type", frozenset({"type", "acpi", "pflash0", "pflash1"})),
    "-m": ("size", frozenset({"size"})),
    "-smp": ("cpus", frozenset({"cpus", "sockets", "cores", "threads", "maxcpus"})),
    "-msg": (None, frozenset({"timestamp"})),
    "-action": (None, frozenset({"reboot", "shutdown", "panic", "watchdog"})),
    "-chardev": ("backend", frozenset({"backend", "id", "path", "server", "wait", "logfile",
                                       "logappend", "append", "name", "fd"})),
    "-mon": ("chardev", frozenset({"chardev", "mode"})),
    "-vnc": ("vnc", frozenset({"vnc", "password"})),
    # The xl platform keys (qemu/platform.py, devices/spice.py, qemu/vtpm.py).
    "-rtc": (None, frozenset({"base"})),
    "-smbios": (None, frozenset({"type", "vendor", "version", "manufacturer", "product",
                                 "serial", "asset", "location", "value"})),
    "-global": ("driver", frozenset({"driver", "ICH9-LPC.disable_s3", "ICH9-LPC.disable_s4"})),
    "-spice": (None, frozenset({"port", "tls-port", "x509-dir", "addr", "disable-ticketing",
                                "agent-mouse", "disable-copy-paste", "image-compression",
                                "streaming-video"})),
    "-tpmdev": ("type", frozenset({"type", "id", "chardev"})),
    # config/xldevices.py's keys (qemu/xldevices.py) and serial file: (qemu/platform.py).
    "-numa": ("type", frozenset({"type", "nodeid", "memdev", "node-id", "socket-id", "src",
                                 "dst", "val"})),
    "-fsdev": ("fsdriver", frozenset({"fsdriver", "id", "path", "security_model"})),
    "-audiodev": ("driver", frozenset({"driver", "id"})),
    "-add-fd": (None, frozenset({"fd", "set"})),
}


def _number(low: int, high: int) -> Callable[[str], bool]:
    return lambda v: v.isascii() and v.isdigit() and low <= int(v) <= high


def _address(v: str) -> bool:
    """An IP address as QEMU's -spice addr takes it; a scope id an interface's."""
    try:
        addr = ipaddress.ip_address(v)
    except ValueError:
        return False
    scope = getattr(addr, "scope_id", None)
    return scope is None or re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", scope) is not None


def _words(*words: str) -> Callable[[str], bool]:
    return lambda v: v in words


def _id(v: str) -> bool:
    return re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,31}", v) is not None


_ON_OFF = _words("on", "off")
_PORT = _number(1, 65535)
_SMALL = _number(0, 4095)
# option -> key -> the form of its value (options with keys not listed are not checked).
VALUES: dict[str, dict[str, Callable[[str], bool]]] = {
    "-spice": {"port": _PORT, "tls-port": _PORT, "addr": _address,
               "x509-dir": lambda v: v.startswith("/"), "disable-ticketing": _ON_OFF,
               "agent-mouse": _ON_OFF, "disable-copy-paste": _ON_OFF,
               "image-compression": _words("auto_glz", "auto_lz", "quic", "glz", "lz", "off"),
               "streaming-video": _words("filter", "all", "off")},
    "-numa": {"type": _words("node", "cpu", "dist"), "nodeid": _SMALL, "memdev": _id,
              "node-id": _SMALL, "socket-id": _SMALL, "src": _SMALL, "dst": _SMALL,
              "val": _number(10, 255)},
    "-fsdev": {"fsdriver": _words("local"), "id": _id, "path": lambda v: v.startswith("/"),
               "security_model": _words("none", "mapped-xattr")},
    "-audiodev": {"driver": _words("none"), "id": _id},
    "-add-fd": {"fd": _number(3, 65535), "set": _SMALL},
    # A keymap name (QEMU takes -k whole; a name with a path would be read as a file).
    "-k": {"": lambda v: re.fullmatch(r"[a-z]{2}(-[a-z]{2,3})?|bepo", v) is not None},
}
# Top-level keys of the JSON objects Xenia writes.
JSON_KEYS = frozenset({
    "driver", "id", "bus", "addr", "chardev", "netdev", "mac", "host_mtu", "bootindex",
    "drive", "serial", "channel", "scsi-id", "lun", "socket-id", "core-id", "thread-id",
    "chassis", "port", "multifunction", "rng", "host", "node-name", "filename", "read-only",
    "discard", "file", "type", "ifname", "script", "downscript", "vhost", "vnet_hdr",
    "qom-type", "fd", "vhostfd", "queues", "x-pci-vendor-id", "slot", "hotplug",
    "index", "name", "tpmdev", "vgamem_mb",
    # vnuma's memory backends, sound, 9p, xHCI ports, USB host devices, spice's usb-redir.
    "size", "audiodev", "fsdev", "mount_tag", "p2", "p3", "hostbus", "hostaddr",
})


class QemuArgvError(AssertionError):
    pass


def split_opts(text: str, implied: str | None) -> list[tuple[str, str]]:
    """The (key, value) items of a QemuOpts string, as QEMU reads them."""
    items: list[tuple[str, str]] = []
    pos = 0
    first = True
    while pos < len(text):
        stop = pos
        while stop < len(text) and text[stop] not in "=,":
            stop += 1
        if stop >= len(text) or text[stop] != "=":
            if first and implied is not None:
                value, pos = _value(text, pos)
                items.append((implied, value))
            else:
                name = text[pos:stop]
                value = "on"
                if name.startswith("no"):
                    name, value = name[2:], "off"
                items.append((name, value))
                pos = stop + 1 if stop < len(text) else stop
        else:
            name = text[pos:stop]
            value, pos = _value(text, stop + 1)
            items.append((name, value))
        first = False
    return items


def _value(text: str, pos: int) -> tuple[str, int]:
    """get_opt_value: up to a single comma; ",," is a comma. Returns (value, next pos)."""
    out = []
    while pos < len(text):
        if text[pos] == ",":
            if text.startswith(",,", pos):
                out.append(",")
                pos += 2
                continue
            return "".join(out), pos + 1
        out.append(text[pos])
        pos += 1
    return "".join(out), pos


@dataclass
class Option:
    name: str
    arg: str | None
    keys: dict[str, str] = field(default_factory=dict)
    json: dict[str, Any] | None = None


def parse_argv(argv: list[str]) -> list[Option]:
    """The options of a QEMU argv (argv[0] is the binary), each read by its syntax."""
    for part in argv:
        if "\0" in part:
            raise QemuArgvError(f"NUL in argv item {part!r}")
    out: list[Option] = []
    i = 1
    while i < len(argv):
        name = argv[i]
        if name in FLAGS:
            out.append(Option(name, None))
            i += 1
            continue
        if i + 1 >= len(argv):
            raise QemuArgvError(f"{name} without its argument")
        arg = argv[i + 1]
        i += 2
        opt = Option(name, arg)
        if name in JSON_OPTS:
            if not arg.startswith("{"):
                raise QemuArgvError(f"{name} {arg!r} is not JSON")
            obj = json.loads(arg)
            if not isinstance(obj, dict):
                raise QemuArgvError(f"{name} {arg!r} is not a JSON object")
            opt.json = obj
        elif name in LEGACY:
            implied, _ = LEGACY[name]
            items = split_opts(arg, implied)
            keys = [k for k, _ in items]
            if len(set(keys)) != len(keys):
                raise QemuArgvError(f"{name} {arg!r} sets a key twice: {keys}")
            opt.keys = dict(items)
        elif name not in PLAIN:
            raise QemuArgvError(f"unknown option {name!r} (a user string as an option?)")
        out.append(opt)
    return out


def check_argv(argv: list[str]) -> list[Option]:
    """parse_argv, then: every legacy key and every JSON key is one Xenia means, and every
    value VALUES knows has its form."""
    opts = parse_argv(argv)
    for opt in opts:
        forms = VALUES.get(opt.name, {})
        items = opt.keys.items() if opt.name in LEGACY else [("", opt.arg or "")]
        for key, value in items:
            if key in forms and not forms[key](value):
                raise QemuArgvError(f"{opt.name} {opt.arg!r}: {key or 'its'} value "
                                    f"{value!r} is not one Xenia writes")
        if opt.name in LEGACY:
            extra = set(opt.keys) - LEGACY[opt.name][1]
            if extra:
                raise QemuArgvError(f"{opt.name} {opt.arg!r} has keys Xenia did not mean: "
                                    f"{sorted(extra)}")
        if opt.json is not None:
            extra = set(opt.json) - JSON_KEYS
            if extra:
                raise QemuArgvError(f"{opt.name} {opt.arg!r} has keys Xenia did not mean: "
                                    f"{sorted(extra)}")
    return opts


def values(opts: list[Option], name: str) -> list[Option]:
    return [o for o in opts if o.name == name]
