"""HVM machine extras: firmware, graphics (VGA + VNC), USB tablet, boot order.

VNC is the graphics console of a headless host, as in xl (`vnc`, `vnclisten`,
`vncdisplay`, `vncunused`, `vncpasswd`); SDL needs a local display and is refused with a
pointer to VNC when there is none. The password never appears on QEMU's command line: it
is set over QMP after start.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
from pathlib import Path
from typing import Any

from xenia.config.model import DomainConfig
from xenia.errors import InvalidConfig, NotSupported
from xenia.qemu.opts import escape_opt

VNC_BASE = 5900
# xl's vga= (stdvga=1 is "stdvga", stdvga=0 "cirrus") -> QEMU's device; none: no card.
VGA_DRIVERS = {"stdvga": "VGA", "cirrus": "cirrus-vga", "qxl": "qxl-vga", "none": ""}
# An IPv6 scope id: an interface name (IFNAMSIZ 16 with its NUL) or an interface index.
# Python's ipaddress takes anything after '%', commas and '=' included.
_SCOPE_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}\Z")


def bad_scope(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """An IPv6 address's scope id if it is not an interface name or index, else None
    (vnclisten and spicehost: the scope id would reach a comma-separated option)."""
    scope = getattr(addr, "scope_id", None)
    return scope if scope is not None and not _SCOPE_RE.match(scope) else None


def firmware_kind(cfg: DomainConfig) -> str:
    """'seabios', 'ovmf' or 'path' (a firmware image file, as xl's firmware=PATH)."""
    fw = (cfg.firmware or "bios").lower()
    if fw in ("bios", "seabios"):
        return "seabios"
    if fw in ("uefi", "ovmf"):
        return "ovmf"
    if fw.startswith("/"):
        if not Path(fw).is_file():
            raise InvalidConfig(f"Failed to create domain '{cfg.name}': firmware file "
                                f"'{cfg.firmware}' does not exist")
        return "path"
    raise InvalidConfig(
        f"Failed to create domain '{cfg.name}': unknown firmware '{cfg.firmware}' (use "
        "bios/seabios, uefi/ovmf, or the path of a firmware image)"
    )


def vnc_listen(cfg: DomainConfig) -> tuple[str, int | None]:
    """(address, display from vnclisten's :N) — the address must be an IP or localhost."""
    text = cfg.vnclisten or "127.0.0.1"
    display = None
    host = text
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            display = int(rest[1:]) if rest[1:].isdigit() else -1
    elif text.count(":") == 1:
        host, _, d = text.partition(":")
        display = int(d) if d.isdigit() else -1
    if display == -1:
        raise InvalidConfig(f"Failed to set up VNC of '{cfg.name}': bad display in "
                            f"vnclisten='{text}'")
    if host != "localhost":
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            raise InvalidConfig(f"Failed to set up VNC of '{cfg.name}': vnclisten "
                                f"'{text}' is not an IP address") from None
        scope = bad_scope(addr)
        if scope is not None:
            raise InvalidConfig(f"Failed to set up VNC of '{cfg.name}': vnclisten '{text}' "
                                f"has a bad scope id '%{scope}' (an interface name or index)")
    if display is not None and display > 65535 - VNC_BASE:
        raise InvalidConfig(f"Failed to set up VNC of '{cfg.name}': display {display} in "
                            f"vnclisten='{text}' is above {65535 - VNC_BASE}")
    return host, display


def port_free(host: str, port: int) -> bool:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host if host != "localhost" else "127.0.0.1", port))
        except OSError:
            return False
    return True


def choose_display(cfg: DomainConfig, taken: set[int]) -> int:
    """The VNC display number: vncdisplay / vnclisten's, else (vncunused) the first free."""
    host, from_listen = vnc_listen(cfg)
    wanted = cfg.vncdisplay if cfg.vncdisplay is not None else from_listen
    if wanted is not None:
        if wanted in taken or not port_free(host, VNC_BASE + wanted):
            if not cfg.vncunused or cfg.vncdisplay is not None:
                raise InvalidConfig(f"Failed to set up VNC of '{cfg.name}': display "
                                    f"{wanted} (port {VNC_BASE + wanted}) is in use")
        else:
            return wanted
    for d in range(0, 100):
        if d not in taken and port_free(host, VNC_BASE + d):
            return d
    raise InvalidConfig(f"Failed to set up VNC of '{cfg.name}': no free display 0-99")


def check_graphics(cfg: DomainConfig) -> None:
    if cfg.sdl and not cfg.vnc and not os.environ.get("DISPLAY"):
        raise NotSupported(
            f"Failed to create domain '{cfg.name}': sdl=1 needs a local display and this "
            "host has none ($DISPLAY is unset); use vnc=1 (and a VNC viewer) instead"
        )
    for dev in cfg.usbdevice:
        if dev not in ("tablet", "mouse", "keyboard"):
            raise NotSupported(f"Failed to create domain '{cfg.name}': usbdevice '{dev}' is "
                               "not supported (tablet, mouse, keyboard)")


def graphics_argv(cfg: DomainConfig, display: int | None) -> list[str]:
    """VGA (unless nographic) and the VNC server; -display none stays for everything else."""
    if cfg.type != "hvm" or cfg.nographic:
        return []
    argv = []
    driver = VGA_DRIVERS[cfg.vga or "stdvga"]
    if driver:
        dev: dict[str, Any] = {"driver": driver, "id": "video0", "bus": "pcie.0", "addr": "0x1"}
        if cfg.videoram:
            dev["vgamem_mb"] = cfg.videoram
        argv += ["-device", _j(dev)]
    if cfg.vnc and display is not None:
        argv += ["-vnc", vnc_arg(cfg, display)]
    return argv


def vnc_arg(cfg: DomainConfig, display: int) -> str:
    """`-vnc`'s argument: the address under the explicit key `vnc=` and escaped (QemuOpts
    would take an implied first value holding '=' as another key)."""
    host, _ = vnc_listen(cfg)
    shown = f"[{host}]" if ":" in host else host
    opts = ",password=on" if cfg.vncpasswd else ""
    return f"vnc={escape_opt(shown)}:{display}{opts}"


def usb_argv(cfg: DomainConfig) -> list[str]:
    if cfg.type != "hvm" or not (cfg.usb or cfg.usbdevice):
        return []
    # usbversion: 1 UHCI, 2 EHCI, 3 (the default) xHCI, as xl's emulated USB bus.
    driver = {1: "piix3-usb-uhci", 2: "usb-ehci"}.get(cfg.usbversion or 3, "qemu-xhci")
    argv = ["-device", _j({"driver": driver, "id": "usb0", "bus": "pcie.0", "addr": "0x1d"})]
    for i, dev in enumerate(cfg.usbdevice):
        driver = {"tablet": "usb-tablet", "mouse": "usb-mouse", "keyboard": "usb-kbd"}[dev]
        argv += ["-device", _j({"driver": driver, "id": f"usbdev{i}", "bus": "usb0.0"})]
    return argv


def _j(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def boot_order(cfg: DomainConfig) -> dict[str, int]:
    """qdev id -> bootindex from xl's boot= ("c" disk, "d" cdrom, "n" network)."""
    from xenia.devices import disk as diskdev
    from xenia.devices import nic as nicdev

    order: dict[str, int] = {}
    if cfg.type != "hvm" or cfg.kernel:
        return order
    for letter in cfg.boot or "cd":
        target = None
        if letter == "c":
            target = next((diskdev.qdev_id(d) for d in cfg.disks if not d.is_cdrom), None)
        elif letter == "d":
            target = next((diskdev.qdev_id(d) for d in cfg.disks if d.is_cdrom), None)
        elif letter == "n" and cfg.vifs and cfg.vifs[0].devid is not None:
            target = nicdev.qdev_id(cfg.vifs[0].devid)
        if target is not None and target not in order:
            order[target] = len(order) + 1
    return order


def check_bootable(cfg: DomainConfig) -> None:
    from xenia.devices import disk as diskdev

    if cfg.type != "hvm" or cfg.kernel:
        return
    media = [d for d in cfg.disks if not diskdev.is_empty(d)]
    wants_net = "n" in (cfg.boot or "") and cfg.vifs
    if not media and not wants_net:
        raise InvalidConfig(
            f"Failed to create domain '{cfg.name}': an hvm domain needs something to boot: "
            "a disk or a cdrom with a medium in disk=[...], boot='n' with a vif, or kernel="
        )
