"""What a host checks on a domain record it did not make: an incoming live migration's,
or a save file's at restore. Both come from elsewhere (a peer, a file a guest may have
written), so they pass the same checks as `create` and more:

- the config through host/validate.check_config (names, uuid, types, ranges); paths go
  through the API's path rule before this (api/migration.py, api/domains.py);
- the record's uuid, and every id that ends up in a path here (a migration job's id),
  must be a UUID in its canonical form, never a path;
- runtime facts: only the PORTABLE_RUNTIME keys, each of its expected shape, `machine`
  one this host's QEMU knows. Anything else is refused, not dropped: a sender that adds
  a key this host does not know is a sender this host does not understand;
- an incoming migration's other fields: the QEMU capabilities it asks for (known ones,
  booleans), the address to listen on (an IP of this host), the disk sizes (bounded by
  the free space where the disks go).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path

from xenia.config.model import DomainConfig
from xenia.errors import InvalidConfig, XeniaError
from xenia.host.validate import check_config
from xenia.migration.records import PORTABLE_RUNTIME
from xenia.store import schema

_PORT = re.compile(r"rp[0-9]{1,3}\Z")
_QDEV = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_CPULIST = re.compile(r"[0-9,\-^ a-z]{1,256}\Z")
MAX_ROOT_PORTS = 256


def check_uuid(value: object, what: str, doing: str) -> str:
    """`value` as a canonical UUID string (lower case, dashed), or InvalidConfig."""
    text = str(value)
    try:
        canon: str | None = str(uuidlib.UUID(text))
    except ValueError:
        canon = None
    if not isinstance(value, str) or canon != text:
        raise InvalidConfig(f"Failed {doing}: {what} {text[:80]!r} is not a UUID in its "
                            "canonical form")
    return canon


def check_runtime(runtime: object, doing: str, machines: Callable[[], set[str]]) -> None:
    """The runtime facts a record carries: known keys, each of its shape."""
    if not isinstance(runtime, dict):
        raise InvalidConfig(f"Failed {doing}: the record's runtime is not a mapping")
    unknown = sorted(str(k) for k in runtime if k not in PORTABLE_RUNTIME)
    if unknown:
        raise InvalidConfig(f"Failed {doing}: the record carries runtime keys this host does "
                            f"not accept: {', '.join(unknown)[:200]} (allowed: "
                            f"{', '.join(PORTABLE_RUNTIME)})")

    def bad(key: str, why: str) -> InvalidConfig:
        return InvalidConfig(f"Failed {doing}: runtime {key} {why}")

    if "machine" in runtime:
        m = runtime["machine"]
        if not isinstance(m, str) or m not in machines():
            raise bad("machine", f"{str(m)[:80]!r} is not a machine type this host's QEMU "
                      "knows")
    if "root_ports" in runtime:
        n = runtime["root_ports"]
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_ROOT_PORTS:
            raise bad("root_ports", f"must be a number 0..{MAX_ROOT_PORTS}")
    if "slots" in runtime:
        slots = runtime["slots"]
        if not isinstance(slots, dict) or not all(
                isinstance(k, str) and _QDEV.match(k) and isinstance(v, str)
                and (v == "" or _PORT.match(v)) for k, v in slots.items()):
            raise bad("slots", "must map device ids to root ports (rpN)")
    if "boot_maxmem" in runtime:
        mem = runtime["boot_maxmem"]
        if not isinstance(mem, int) or isinstance(mem, bool) or mem < 1:
            raise bad("boot_maxmem", "must be a positive number of MiB")
    if "pins" in runtime:
        pins = runtime["pins"]
        if not isinstance(pins, dict) or not all(
                isinstance(k, str) and k.isdigit() and isinstance(v, str) and _CPULIST.match(v)
                for k, v in pins.items()):
            raise bad("pins", "must map vCPU numbers to CPU lists")


def check_arriving(data: object, doing: str, machines: Callable[[], set[str]]) -> None:
    """Everything about a record from elsewhere that is not a path (see the module doc)."""
    if not isinstance(data, dict):
        raise InvalidConfig(f"Failed {doing}: the domain record is not a mapping")
    # A record of an older release (a save file, a sender not yet upgraded) is checked
    # as this release reads it: upgraded first (its runtime "nports" is "root_ports").
    try:
        data = schema.upgrade_domain(data)
    except (AttributeError, TypeError, ValueError) as e:
        raise InvalidConfig(f"Failed {doing}: the domain record is unreadable ({e})") from e
    check_uuid(data.get("uuid"), "the domain's uuid", doing)
    raw = data.get("config")
    if isinstance(raw, dict):
        # DomainConfig.from_dict would drop them; a record with keys this host does not
        # know comes from a sender this host does not understand.
        fields = {f.name for f in dataclasses.fields(DomainConfig)}
        extra = sorted(str(k) for k in raw if k not in fields)
        if extra:
            raise InvalidConfig(f"Failed {doing}: the config carries keys this host does "
                                f"not know: {', '.join(extra)[:200]}")
    try:
        cfg = DomainConfig.from_dict(data["config"])
    except XeniaError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidConfig(f"Failed {doing}: the domain record is unreadable ({e})") from e
    if data.get("name") != cfg.name:
        raise InvalidConfig(f"Failed {doing}: the record's name and its config's differ")
    if cfg.uuid is not None and cfg.uuid != data["uuid"]:
        raise InvalidConfig(f"Failed {doing}: the record's uuid and its config's differ")
    check_config(cfg)
    check_runtime(data.get("runtime", {}), doing, machines)


# -- the other fields of an incoming migration's request -------------------------------
# The capabilities a source may ask this host's QEMU for (sender.py sends these only).
INCOMING_CAPS = ("postcopy-ram",)
MAX_DISK_BYTES = 1 << 50  # 1 PiB: more than any pool here holds


def check_caps(caps: object) -> dict[str, bool]:
    """Migration capabilities from a peer: known ones only, each true or false."""
    if caps is None:
        return {}
    if not isinstance(caps, dict):
        raise InvalidConfig("Failed to accept a migration: caps is not a mapping")
    for key, value in caps.items():
        if key not in INCOMING_CAPS:
            raise InvalidConfig(f"Failed to accept a migration: caps {str(key)[:80]!r} is "
                                f"not one this host sets (allowed: {', '.join(INCOMING_CAPS)})")
        if not isinstance(value, bool):
            raise InvalidConfig(f"Failed to accept a migration: caps {key} must be true or "
                                "false")
    return dict(caps)


def check_listen_host(value: object) -> str:
    """Where this host listens for the stream (and serves NBD): an IP address of this
    host, as a literal (no name to resolve, nothing to splice into an address)."""
    text = str(value)[:80]
    try:
        ip = ipaddress.ip_address(value if isinstance(value, str) else "")
    except ValueError:
        ip = None
    if ip is None or ip.is_unspecified or ip.is_multicast:
        raise InvalidConfig(f"Failed to accept a migration: listen_host {text!r} is not an "
                            "IP address of this host")
    # One of this host's addresses is one a socket can be bound to.
    fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            s.bind((str(ip), 0))
    except OSError as e:
        raise InvalidConfig(f"Failed to accept a migration: listen_host {text!r} is not an "
                            f"address of this host ({e.strerror})") from e
    return str(ip)


def check_disk_sizes(sizes: object, disks: list[tuple[str, Path]]) -> dict[str, int]:
    """The sizes of the disks --copy-storage creates here ((vdev, path) each): one for
    each, a positive number of bytes, together within the free space where they go."""
    if not isinstance(sizes, dict):
        raise InvalidConfig("Failed to accept a migration: disk_sizes is not a mapping")
    wanted = {vdev for vdev, _ in disks}
    extra = sorted(str(k)[:20] for k in sizes if k not in wanted)
    if extra:
        raise InvalidConfig(f"Failed to accept a migration: disk_sizes names disks the "
                            f"domain does not copy: {', '.join(extra)[:200]}")
    need: dict[int, int] = {}
    free: dict[int, tuple[int, Path]] = {}
    for vdev, path in disks:
        size = sizes.get(vdev)
        if not isinstance(size, int) or isinstance(size, bool) \
                or not 0 < size <= MAX_DISK_BYTES:
            raise InvalidConfig(f"Failed to copy disk {vdev}: disk_sizes gives "
                                f"{str(size)[:40]!r}, not a size in bytes (1..{MAX_DISK_BYTES})")
        try:
            st = os.statvfs(path.parent)
            dev = os.stat(path.parent).st_dev
        except OSError as e:
            raise InvalidConfig(f"Failed to copy disk {vdev}: {path.parent}: "
                                f"{e.strerror}") from e
        need[dev] = need.get(dev, 0) + size
        free[dev] = (st.f_bavail * st.f_frsize, path.parent)
    for dev, total in need.items():
        avail, where = free[dev]
        if total > avail:
            raise InvalidConfig(f"Failed to accept a migration: its disks need {total} bytes "
                                f"in {where}, only {avail} are free there")
    return {vdev: int(sizes[vdev]) for vdev, _ in disks}
