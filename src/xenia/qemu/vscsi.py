"""QEMU arguments for xl's `vscsi` (config/vscsi.py parsed them): one virtio-scsi
controller a vdev host number, on a root port, and a SCSI device a LUN at the vdev's
target and lun; the main functions are vscsi_args and check.

A pdev that is a real SCSI device (its block device has an sg node,
/sys/block/X/device/scsi_generic) becomes `scsi-block`: the guest's SCSI commands reach
the device. Anything else (another block device, an image file) becomes `scsi-hd`, a
disk QEMU emulates; a notice says so once a domain.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from xenia.config.model import DomainConfig
from xenia.config.vscsi import hctl
from xenia.errors import InvalidConfig, NotFound

log = logging.getLogger(__name__)
SYS = Path("/sys")


def controller_id(host: int) -> str:
    return f"vscsi{int(host)}"


def node_name(dev: dict[str, Any]) -> str:
    return f"vscsi{int(dev['host'])}-{int(dev['target'])}-{int(dev['lun'])}"


def hosts(cfg: DomainConfig) -> list[int]:
    """The vdev host numbers, each a controller, in order."""
    return sorted({int(d["host"]) for d in cfg.vscsi})


def resolve(pdev: str, sys: Path = SYS) -> str:
    """The host path of a pdev: itself, or the block device at the host's H:C:T:L."""
    if hctl(pdev) is None:
        return pdev
    block = sys / "class" / "scsi_device" / pdev.strip() / "device" / "block"
    names = sorted(p.name for p in block.iterdir()) if block.is_dir() else []
    if not names:
        raise NotFound(f"Failed to find the host's SCSI device {pdev}: no block device at "
                       "that address (see lsscsi or /sys/class/scsi_device)")
    return f"/dev/{names[0]}"


def is_scsi_device(path: str, sys: Path = SYS) -> bool:
    """True if `path` is a block device with an sg node: a real SCSI LUN."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not Path(path).is_block_device():
        return False
    dev = sys / "dev" / "block" / f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    return (dev / "device" / "scsi_generic").is_dir()


def paths(cfg: DomainConfig) -> list[str]:
    """Every pdev's host path (written: a SCSI disk is read-write)."""
    return [resolve(str(d["pdev"])) for d in cfg.vscsi]


def check(cfg: DomainConfig) -> None:
    """Before anything starts: each pdev exists and is a block device or a file."""
    for d in cfg.vscsi:
        path = resolve(str(d["pdev"]))
        p = Path(path)
        if not p.exists():
            raise NotFound(f"Failed to give vscsi '{d['pdev']}' to '{cfg.name}': no such "
                           "device or file; fix pdev in vscsi")
        if not (p.is_block_device() or p.is_file()):
            raise InvalidConfig(f"Failed to give vscsi '{d['pdev']}' to '{cfg.name}': it is "
                                "neither a block device nor a file")


def vscsi_args(cfg: DomainConfig, slots: dict[str, str],
               sys: Path = SYS) -> list[tuple[str, dict[str, Any]]]:
    """The controllers (on their root ports in `slots`), then each LUN's blockdev and
    device."""
    out: list[tuple[str, dict[str, Any]]] = []
    for h in hosts(cfg):
        out.append(("-device", {"driver": "virtio-scsi-pci", "id": controller_id(h),
                                "bus": slots.get(controller_id(h), "pcie.0")}))
    emulated = []
    for d in cfg.vscsi:
        path = resolve(str(d["pdev"]), sys)
        node = node_name(d)
        block = Path(path).is_block_device()
        passthrough = is_scsi_device(path, sys)
        if not passthrough:
            emulated.append(str(d["pdev"]))
        out.append(("-blockdev", {"driver": "host_device" if block else "file",
                                  "node-name": node, "filename": path}))
        out.append(("-device", {"driver": "scsi-block" if passthrough else "scsi-hd",
                                "id": f"{node}-dev", "bus": f"{controller_id(d['host'])}.0",
                                "channel": 0, "scsi-id": int(d["target"]),
                                "lun": int(d["lun"]), "drive": node}))
    if emulated:
        log.warning("domain %s: notice: vscsi %s %s no SCSI device of the host (no sg "
                    "node): the guest gets a disk QEMU emulates (scsi-hd), not the "
                    "device's own SCSI commands", cfg.name, ", ".join(emulated),
                    "is" if len(emulated) == 1 else "are")
    return out
