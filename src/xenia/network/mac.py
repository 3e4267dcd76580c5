"""Guest MAC addresses: Xen's OUI, normalisation, and the MAC Xenia gives a guest's tap."""

from __future__ import annotations

import re
import secrets

from xenia.errors import InvalidConfig

XEN_OUI = "00:16:3e"
_MAC_RE = re.compile(r"[0-9A-Fa-f]{1,2}([:-][0-9A-Fa-f]{1,2}){5}\Z")


def generate_mac() -> str:
    """A random 00:16:3e:xx:xx:xx, as libxl makes them.

    libxl clears the top bit of the fourth byte (00:16:3e:00:00:00-7f:ff:ff); doing the
    same keeps our MACs in the range Xen users already filter or reserve for guests.
    """
    r = secrets.token_bytes(3)
    return f"{XEN_OUI}:{r[0] & 0x7F:02x}:{r[1]:02x}:{r[2]:02x}"


def normalize_mac(mac: str) -> str:
    """`mac` as lower-case aa:bb:cc:dd:ee:ff; accepts '-' and one-digit groups like xl."""
    if not isinstance(mac, str) or not _MAC_RE.match(mac):
        raise InvalidConfig(f"Failed to read the MAC address '{mac}': expected six hex pairs "
                            "like 00:16:3e:01:02:03")
    return ":".join(f"{int(g, 16):02x}" for g in re.split("[:-]", mac))


def check_guest_mac(mac: str) -> str:
    """A MAC a guest NIC may have: unicast and not all zeros (normalised)."""
    mac = normalize_mac(mac)
    if int(mac[:2], 16) & 1:
        raise InvalidConfig(f"Failed to attach vif: MAC {mac} is a multicast address; a NIC "
                            "needs a unicast one (first byte even), e.g. 00:16:3e:...")
    if mac == "00:00:00:00:00:00":
        raise InvalidConfig("Failed to attach vif: MAC 00:00:00:00:00:00 is not valid")
    return mac


def tap_mac(guest_mac: str) -> str:
    """The MAC of the host side (tap) of a guest NIC: the guest's with first byte fe.

    As libvirt does: a bridge takes the lowest MAC of its ports as its own, and fe keeps
    taps from dragging it around as guests come and go; and it leaves the guest's MAC
    readable on the host, which is how a duplicate is found (see NetworkManager.mac_in_use).
    """
    return "fe" + normalize_mac(guest_mac)[2:]
