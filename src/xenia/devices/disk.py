"""Disks from xl disk specs: checks (path, format, sharing) and QEMU -blockdev/-device JSON.

Bus mapping (docs/xl-compat.md): `xvdX` is a virtio-blk disk on a PCIe root port of its
own; `sdX`, and `hdX` in pv/pvh domains, are SCSI disks (scsi-hd/scsi-cd) on a
virtio-scsi controller; `hdX` in hvm domains are IDE/AHCI disks on q35's ICH9 controller.
The image format is always given to QEMU (never probed for use): a raw disk a guest wrote
a qcow2 header into must stay raw.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xenia.config.model import DiskSpec
from xenia.errors import InUse, InvalidConfig, NotFound, NotSupported, XeniaError

# xl format names -> QEMU block drivers.
FORMATS = {"raw": "raw", "qcow": "qcow", "qcow2": "qcow2", "vhd": "vpc", "qed": "qed"}
SCSI_CONTROLLER = "scsi0"
_LETTERS = re.compile(r"(xvd|hd|sd)([a-z]+)\Z")


def disk_index(vdev: str) -> tuple[str, int]:
    """('xvd'|'hd'|'sd', index) of a whole-disk vdev name; partitions are refused."""
    m = _LETTERS.match(vdev)
    if not m:
        raise InvalidConfig(
            f"Failed to attach disk '{vdev}': use a whole-disk name such as xvda, sdb or hdc "
            "(partitions and numeric device ids cannot be separate QEMU disks)"
        )
    index = -1
    for ch in m.group(2):
        index = (index + 1) * 26 + (ord(ch) - ord("a"))
    return m.group(1), index


def qdev_id(spec: DiskSpec) -> str:
    return f"disk-{spec.vdev}"


def bus_kind(spec: DiskSpec, dtype: str) -> str:
    """'virtio' (own root port), 'scsi' (virtio-scsi controller) or 'ide' (ICH9 AHCI)."""
    prefix, _ = disk_index(spec.vdev)
    if prefix == "xvd":
        if spec.is_cdrom:
            return "scsi"  # virtio-blk has no removable media
        return "virtio"
    if prefix == "hd" and dtype == "hvm":
        return "ide"
    return "scsi"


def is_empty(spec: DiskSpec) -> bool:
    return spec.target is None or spec.format == "empty"


# backend= values that mean the host itself (xl's Domain-0).
HOST_BACKENDS = ("0", "Domain-0")
# How long a driver domain's disk waits for its server to come back before I/O fails, and
# how long the first connection is retried (s). See docs/decisions.md (driver domains).
NBD_RECONNECT_DELAY = 5
NBD_OPEN_TIMEOUT = 30


def is_remote(spec: DiskSpec) -> bool:
    """Served by a driver domain (`backend=DOMNAME`): `target` is a path inside it."""
    return spec.backend is not None and spec.backend not in HOST_BACKENDS


def has_host_file(spec: DiskSpec) -> bool:
    """The disk is a file or block device of the host."""
    return not is_empty(spec) and not is_remote(spec)


def nbd_blockdevs(spec: DiskSpec, host: str, port: int, export: str) -> list[dict[str, Any]]:
    """QEMU's NBD client for a disk a driver domain serves, then the raw format node.

    reconnect-delay: after the server goes away, requests wait that long for it to come
    back, then fail with EIO (the guest sees I/O errors, QEMU keeps running) while QEMU
    keeps reconnecting in the background; open-timeout retries the first connection.
    """
    ro = spec.readonly
    return [
        {"driver": "nbd", "node-name": f"file-{spec.vdev}",
         "server": {"type": "inet", "host": host, "port": str(port)}, "export": export,
         "reconnect-delay": NBD_RECONNECT_DELAY, "open-timeout": NBD_OPEN_TIMEOUT,
         "read-only": ro},
        {"driver": "raw", "node-name": f"drive-{spec.vdev}", "file": f"file-{spec.vdev}",
         "read-only": ro},
    ]


def target_path(spec: DiskSpec) -> Path:
    """The image path as written, with xl's `phy:hda1` meaning /dev/hda1."""
    assert spec.target is not None
    if not spec.target.startswith("/") and spec.backendtype == "phy":
        return Path("/dev") / spec.target
    return Path(spec.target)


def resolve_target(spec: DiskSpec, domain: str) -> Path | None:
    """The image path; None for an empty cdrom. Checks it exists and is usable."""
    if is_empty(spec):
        if spec.is_cdrom:
            return None
        raise InvalidConfig(f"Failed to attach disk {spec.vdev} to '{domain}': no target given")
    path = target_path(spec)
    if not path.is_absolute():
        raise InvalidConfig(
            f"Failed to attach disk {spec.vdev} to '{domain}': target '{spec.target}' is not "
            "an absolute path"
        )
    try:
        st = path.stat()
    except FileNotFoundError:
        raise NotFound(
            f"Failed to attach disk {spec.vdev} to '{domain}': '{path}' does not exist "
            "(create it with `xenia volume create`, or fix the disk spec)"
        ) from None
    except OSError as e:
        raise InvalidConfig(f"Failed to attach disk {spec.vdev} to '{domain}': {e}") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise InvalidConfig(
            f"Failed to attach disk {spec.vdev} to '{domain}': '{path}' is neither a file "
            "nor a block device"
        )
    mode = os.R_OK if spec.readonly or spec.is_cdrom else os.R_OK | os.W_OK
    if not os.access(path, mode):
        raise InvalidConfig(f"Failed to attach disk {spec.vdev} to '{domain}': '{path}' is "
                            "not accessible")
    return path


def check_format(spec: DiskSpec, path: Path, domain: str,
                 probe: Callable[[Path], dict[str, Any]]) -> None:
    """Refuse a format that is not the image's: never a silent probe, never a silent mix-up.

    `probe` is qemu-img info without a format (only to compare, never to open the disk).
    """
    if spec.format not in FORMATS:
        raise NotSupported(f"Failed to attach disk {spec.vdev} to '{domain}': format "
                           f"'{spec.format}' is not supported (raw, qcow2, qcow, vhd, qed)")
    try:
        actual = str(probe(path).get("format", ""))
    except XeniaError as e:
        raise InvalidConfig(
            f"Failed to attach disk {spec.vdev} to '{domain}': cannot read '{path}': {e}"
        ) from e
    want = FORMATS[spec.format]
    if actual != want:
        shown = {v: k for k, v in FORMATS.items()}.get(actual, actual)
        raise InvalidConfig(
            f"Failed to attach disk {spec.vdev} to '{domain}': '{path}' is a {shown} image "
            f"but the disk spec says format={spec.format}; write format={shown} in the spec "
            "(Xenia never guesses a disk's format)"
        )


def check_sharing(spec: DiskSpec, path: Path, domain: str,
                  users: Callable[[Path], list[tuple[str, bool]]],
                  dependents: Callable[[Path], list[str]]) -> None:
    """A read-write disk must not be used by another running domain, nor back a clone.

    `users(path)` -> [(domain name, opened read-only)] of other domains using it.
    """
    for other, other_ro in users(path):
        if not (spec.readonly and other_ro) and not spec.is_cdrom:
            raise InUse(
                f"Failed to attach disk {spec.vdev} to '{domain}': '{path}' is in use by "
                f"domain '{other}'{' read-write' if not other_ro else ''}; a disk can be "
                "shared only read-only (access=ro) by every domain"
            )
    if not spec.readonly and not spec.is_cdrom:
        deps = dependents(path)
        if deps:
            raise InUse(
                f"Failed to attach disk {spec.vdev} to '{domain}' read-write: '{path}' is the "
                f"base of {', '.join(deps)}; writing it would corrupt them (attach it with "
                "access=ro, or use a clone)"
            )


@dataclass
class DiskPlan:
    spec: DiskSpec
    qdev: str
    node: str | None  # top (format) node; None for an empty cdrom
    blockdevs: list[dict[str, Any]]
    device: dict[str, Any]
    bus: str  # virtio | scsi | ide


def plan(spec: DiskSpec, path: Path | None, dtype: str, port: str | None,
         bootindex: int | None = None,
         remote: list[dict[str, Any]] | None = None) -> DiskPlan:
    """The -blockdev and -device JSON of one disk. `port`: its root port for virtio;
    `remote`: the blockdevs of a disk a driver domain serves (nbd_blockdevs)."""
    kind = bus_kind(spec, dtype)
    qid = qdev_id(spec)
    ro = spec.readonly or spec.is_cdrom
    blockdevs: list[dict[str, Any]] = []
    node = None
    if path is not None:
        node = f"drive-{spec.vdev}"
        blockdevs = [
            {"driver": "host_device" if path.is_block_device() else "file",
             "node-name": f"file-{spec.vdev}", "filename": str(path), "read-only": ro,
             "discard": "unmap" if spec.discard is not False else "ignore"},
            {"driver": FORMATS[spec.format], "node-name": node, "file": f"file-{spec.vdev}",
             "read-only": ro},
        ]
    elif remote is not None:
        node = f"drive-{spec.vdev}"
        blockdevs = remote
    _, index = disk_index(spec.vdev)
    dev: dict[str, Any]
    if kind == "virtio":
        if port is None:
            raise XeniaError(f"Failed to place disk {spec.vdev}: no free PCIe root port")
        dev = {"driver": "virtio-blk-pci", "id": qid, "bus": port, "serial": spec.vdev}
    elif kind == "scsi":
        prefix, _ = disk_index(spec.vdev)
        dev = {"driver": "scsi-cd" if spec.is_cdrom else "scsi-hd", "id": qid,
               "bus": f"{SCSI_CONTROLLER}.0", "channel": 0,
               # hdX and sdX share the controller: keep their target ids apart.
               "scsi-id": index + (64 if prefix == "hd" else 0), "lun": 0}
        if not spec.is_cdrom:
            dev["serial"] = spec.vdev
    else:
        if index > 5:
            raise InvalidConfig(f"Failed to attach disk {spec.vdev}: IDE/AHCI has hda..hdf")
        dev = {"driver": "ide-cd" if spec.is_cdrom else "ide-hd", "id": qid,
               "bus": f"ide.{index}"}
    if node is not None:
        dev["drive"] = node
    if bootindex is not None:
        dev["bootindex"] = bootindex
    return DiskPlan(spec, qid, node, blockdevs, dev, kind)


def scsi_controller(port: str) -> dict[str, Any]:
    return {"driver": "virtio-scsi-pci", "id": SCSI_CONTROLLER, "bus": port}
