"""xl's `vscsi` (Xen's PV SCSI, SUSE's `"pdev, vdev[, options]"`): the parser,
parse_vscsi, and the checks of a config from the API, check_vscsi.

pdev is the host's device or file (an absolute path), or the host's SCSI address
`H:C:T:L` (resolved at start by qemu/vscsi.py). vdev is the guest's
`HOST:CHANNEL:TARGET:LUN`: each HOST number is one virtio-scsi controller; virtio-scsi
has a single channel, so CHANNEL must be 0. Xen's `feature-host` (the backend passes the
host's whole SCSI host) is refused: Xenia gives LUNs one by one.
"""

from __future__ import annotations

import re
from typing import Any

from xenia.errors import InvalidConfig

MAX_VSCSI = 16
MAX_VSCSI_HOSTS = 4
MAX_TARGET = 255  # virtio-scsi's scsi-id
MAX_LUN = 16383
_HCTL_RE = re.compile(r"(\d{1,5}):(\d{1,5}):(\d{1,5}):(\d{1,5})\Z")


def hctl(text: str) -> tuple[int, int, int, int] | None:
    m = _HCTL_RE.match(text.strip())
    return (int(m[1]), int(m[2]), int(m[3]), int(m[4])) if m else None


def parse_vscsi(spec: str) -> dict[str, Any]:
    """One vscsi entry: {"pdev", "host", "channel", "target", "lun"}."""
    fail = f"Failed to parse vscsi '{spec}'"
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise InvalidConfig(f"{fail}: give \"pdev, vdev[, options]\" (\"/dev/sdb, 0:0:0:0\")")
    pdev, vdev, options = parts[0], parts[1], [p for p in parts[2:] if p]
    for opt in options:
        if opt == "feature-host":
            raise InvalidConfig(f"{fail}: feature-host (the host's whole SCSI host) is Xen's; "
                                "give each LUN as an entry of its own")
        raise InvalidConfig(f"{fail}: unknown option '{opt}' (Xenia takes none)")
    if "\0" in pdev or not (pdev.startswith("/") or hctl(pdev)):
        raise InvalidConfig(f"{fail}: pdev must be an absolute path (/dev/sdb, "
                            "/dev/disk/by-id/..., an image file) or the host's H:C:T:L")
    addr = hctl(vdev)
    if addr is None:
        raise InvalidConfig(f"{fail}: vdev must be HOST:CHANNEL:TARGET:LUN, e.g. 0:0:1:0")
    host, channel, target, lun = addr
    if host >= MAX_VSCSI_HOSTS:
        raise InvalidConfig(f"{fail}: the vdev's host number must be below "
                            f"{MAX_VSCSI_HOSTS}")
    if channel != 0:
        raise InvalidConfig(f"{fail}: the vdev's channel must be 0 (virtio-scsi has one)")
    if target > MAX_TARGET or lun > MAX_LUN:
        raise InvalidConfig(f"{fail}: target must be 0-{MAX_TARGET} and lun 0-{MAX_LUN}")
    return {"pdev": pdev, "host": host, "channel": channel, "target": target, "lun": lun}


def spec_of(dev: dict[str, Any]) -> str:
    return (f"{dev.get('pdev')}, {dev.get('host')}:{dev.get('channel')}:"
            f"{dev.get('target')}:{dev.get('lun')}")


def check_vscsi(devs: list[dict[str, Any]], fail: str) -> None:
    """The entries of a config (parsed, or from the API: each must be what the parser
    makes of it), at most MAX_VSCSI, no two at one address."""
    for d in devs:
        if not isinstance(d, dict) or parse_vscsi(spec_of(d)) != d:
            raise InvalidConfig(f"{fail}: bad vscsi entry {d!r}")
    if len(devs) > MAX_VSCSI:
        raise InvalidConfig(f"{fail}: at most {MAX_VSCSI} vscsi devices")
    addrs = [(d["host"], d["target"], d["lun"]) for d in devs]
    if len(set(addrs)) != len(addrs):
        raise InvalidConfig(f"{fail}: two vscsi devices have one vdev; give each its own")
