"""boot_config: the config a QEMU domain boots with when `bootloader = "pygrub"` picks its
kernel from its own disk (images/pygrub.py); otherwise the domain's config as it is.

The chosen kernel and initrd are copied into the run directory's `boot/` for each start
(a reboot in place keeps them; a new start reads the disk again, as Xen's pygrub runs at
every domain build). The stored config is not changed: the disk decides at each boot.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from xenia.config.model import DiskSpec, DomainConfig
from xenia.devices import disk as diskdev
from xenia.errors import InvalidConfig, NotSupported
from xenia.images import pygrub
from xenia.store.base import DomainRecord

BOOTLOADERS = ("pygrub",)


def uses_bootloader(cfg: DomainConfig) -> bool:
    return bool(cfg.bootloader) and not cfg.kernel


def check_bootloader(cfg: DomainConfig) -> None:
    if not uses_bootloader(cfg):
        return
    if Path(str(cfg.bootloader)).name not in BOOTLOADERS:
        raise NotSupported(f"Failed to create domain '{cfg.name}': bootloader "
                           f"'{cfg.bootloader}' is not supported (pygrub)")
    if _boot_disk(cfg) is None:
        raise InvalidConfig(f"Failed to create domain '{cfg.name}': pygrub reads the "
                            "kernel from the first disk, and the domain has none")


def _boot_disk(cfg: DomainConfig) -> DiskSpec | None:
    return next((d for d in cfg.disks if not d.is_cdrom and diskdev.has_host_file(d)), None)


def boot_config(record: DomainRecord, run_dir: Path) -> DomainConfig:
    cfg = record.config
    if not uses_bootloader(cfg):
        return cfg
    disk = _boot_disk(cfg)
    assert disk is not None  # check_bootloader
    if disk.format != "raw":
        raise NotSupported(f"Failed to boot '{cfg.name}' with pygrub: it reads raw disks, "
                           f"and {disk.vdev} is {disk.format} (qemu-img convert -O raw)")
    boot = pygrub.extract_boot(diskdev.target_path(disk), run_dir / "boot",
                               cfg.bootloader_args)
    record.runtime["bootloader_entry"] = boot.title
    cmdline = " ".join(a for a in (boot.cmdline, cfg.extra or "") if a)
    return dataclasses.replace(cfg, kernel=str(boot.kernel),
                               ramdisk=str(boot.ramdisk) if boot.ramdisk else None,
                               cmdline=cmdline, root=None, extra=None)
