"""A container's NICs configured from the host, as Docker does: the container itself has no
CAP_NET_ADMIN (unless its config adds it), so it can neither bring a link up nor give it an
address.

Main entry points: `nic_config` (what the config asks for one interface) and `configure`
(do it inside the container's network namespace, before its init runs). The keys are the
ones the rootfs's init and the tiny VM image read, from the config's `extra`/`cmdline`
(XENIA_CMDLINE in the container), first match wins:

- `xenia.ip.ethN=ADDR/PREFIX|dhcp|off` for ethN, `xenia.ip=...` for eth0, with
  `xenia.gw=GW` (the default route, through the interface that has it in its subnet);
- the kernel's `ip=CLIENT:SERVER:GW:NETMASK:HOSTNAME:DEVICE:AUTOCONF[:DNS0[:DNS1]]`;
- else DHCP, which only the container can do (and only with CAP_NET_ADMIN): the link is
  brought up and left without an address.

lo and every ethN are brought up; static addresses and the route are set. DNS servers
(`xenia.dns=`) are a file inside the container, which its init writes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from xenia.errors import BackendError
from xenia.tools import find_tool, run_tool

DEFAULT_PREFIX = 24


@dataclass(frozen=True)
class NicConfig:
    iface: str
    mode: str  # "static", "dhcp" or "off"
    address: ipaddress.IPv4Interface | None = None
    gateway: ipaddress.IPv4Address | None = None


def _interface(text: str) -> ipaddress.IPv4Interface:
    return ipaddress.IPv4Interface(text if "/" in text else f"{text}/{DEFAULT_PREFIX}")


def _kernel_ip(value: str, iface: str) -> tuple[str, str | None] | None:
    """(conf, gateway) of the kernel's ip= for `iface`, None if it is not about it."""
    if value in ("off", "none"):
        return "off", None
    if value in ("on", "any", "dhcp", "bootp", "rarp", "both"):
        return "dhcp", None
    fields = value.split(":") + [""] * 7
    client, _server, gw, mask, _host, device, autoconf = fields[:7]
    if (device or "eth0") != iface:
        return None
    if (autoconf or "off") not in ("off", "none", "static"):
        return "dhcp", None
    if not client:
        return "off", None
    prefix = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen if mask else DEFAULT_PREFIX
    return f"{client}/{prefix}", gw or None


def nic_config(cmdline: str, iface: str) -> NicConfig:
    """What the boot keys in `cmdline` ask for `iface`. ValueError for a malformed
    address (the container's init would say "bad address" for it)."""
    conf = conf0 = gw = kip = None
    for arg in cmdline.split():
        key, _, value = arg.partition("=")
        if key == f"xenia.ip.{iface}":
            conf = value
        elif key == "xenia.ip":
            conf0 = value
        elif key == "xenia.gw":
            gw = value
        elif key == "ip":
            kip = value
    if conf is None and iface == "eth0":
        conf = conf0
    if conf is None and kip is not None:
        found = _kernel_ip(kip, iface)
        if found is not None:
            conf, gw = found
    if conf is None or conf == "dhcp":
        return NicConfig(iface, "dhcp")
    if conf in ("off", "none"):
        return NicConfig(iface, "off")
    return NicConfig(iface, "static", _interface(conf),
                     ipaddress.IPv4Address(gw) if gw else None)


def commands(nics: list[NicConfig]) -> list[list[str]]:
    """The `ip` commands (arguments after `ip`) that configure `nics` in a fresh
    namespace, in order: links up, addresses, then the default route."""
    out = [["link", "set", "lo", "up"]]
    for nic in nics:
        out.append(["link", "set", nic.iface, "up"])
        if nic.address is not None:
            out.append(["addr", "add", str(nic.address), "dev", nic.iface])
    for nic in nics:
        if nic.address is not None and nic.gateway is not None and \
                nic.gateway in nic.address.network:
            out.append(["route", "add", "default", "via", str(nic.gateway), "dev",
                        nic.iface])
            break
    return out


def configure(pid: int, ifaces: list[str], cmdline: str, name: str) -> list[NicConfig]:
    """Configure the NICs of the container whose init is `pid` from its boot keys, in its
    network namespace (nsenter + ip, argv lists). Returns what each one got."""
    doing = f"to configure the network of container '{name}'"
    nics = []
    for iface in ifaces:
        try:
            nics.append(nic_config(cmdline, iface))
        except ValueError as e:
            raise BackendError(f"Failed {doing}: {iface}: {e}; fix xenia.ip/ip= in extra "
                               "or cmdline") from None
    nsenter = find_tool("nsenter", "util-linux", doing)
    ip = find_tool("ip", "iproute2", doing)
    for args in commands(nics):
        run_tool([nsenter, f"--net=/proc/{pid}/ns/net", "--", ip, *args], doing)
    return nics
