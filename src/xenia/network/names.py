"""Names of network devices: networks (= their bridge), taps, and xl's default tap name."""

from __future__ import annotations

import re

from xenia.errors import InvalidConfig

# The kernel takes up to 15 bytes (IFNAMSIZ - 1) and forbids '/', ':' and whitespace. We
# allow a safe subset: the names end up in nft rules, dnsmasq options and file names, and
# a leading '-' or '.' would read as an option or a hidden file there.
_IFNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}\Z")
IFNAME_RULE = "1 to 15 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
# /proc/sys/net/ipv4/conf/{all,default} would be ambiguous with these device names.
_RESERVED = ("all", "default")

DEFAULT_BRIDGE = "xenbr0"


def valid_ifname(name: str) -> bool:
    return bool(_IFNAME_RE.match(name)) and name not in _RESERVED


def check_ifname(name: str, what: str, doing: str) -> str:
    """`name` if it is a usable device name, else InvalidConfig naming `what` it is."""
    if not isinstance(name, str) or not valid_ifname(name):
        raise InvalidConfig(f"Failed {doing}: invalid {what} '{name}' ({IFNAME_RULE}; "
                            f"not 'all' or 'default')")
    return name


def tap_name(domid: int, devid: int, vifname: str | None = None) -> str:
    """The host side of a guest NIC: the user's vifname, else xl's `vif<domid>.<devid>`."""
    if vifname:
        return check_ifname(vifname, "vifname", "to name the vif")
    if domid < 0 or devid < 0:
        raise InvalidConfig(f"Failed to name the vif: domid {domid} and devid {devid} must "
                            "not be negative")
    return check_ifname(f"vif{domid}.{devid}", "tap name", "to name the vif")
