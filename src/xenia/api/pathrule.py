"""PathRule: host paths given over TCP must lie inside a pool's directory or an allowed one.

A token that may create domains or attach disks must not thereby read or write any file
of the host: every disk, cdrom, kernel, ramdisk, firmware, rootfs, p9 share, USB stick
image, vscsi device, save file and pool path that arrives over TCP is resolved (symlinks
and `..`, os.path.realpath) and must then lie inside a storage pool's directory or a
directory the host's admin allowed with `xeniad --allow-path DIR` (or $XENIA_ALLOW_PATHS,
colon-separated). An image's backing chain is followed too, one link at a time and each
checked before it is opened: a guest can write a qcow2 header naming any host file into
its raw disk; so is each qcow2 image's external data file. The UNIX socket (root) is not limited.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from xenia.config.model import DiskSpec, DomainConfig
from xenia.errors import InvalidConfig, PermissionDenied

ALLOW_ENV = "XENIA_ALLOW_PATHS"
# Formats whose header can name a backing file; raw cannot.
LAYERED = ("qcow2", "qcow", "qed", "vhd")
MAX_CHAIN = 16

# fn(path, format or None) -> `qemu-img info` of the image alone (its backing not opened).
ImageInfo = Callable[[Path, "str | None"], dict[str, Any]]


def allowed_from(args: Iterable[str], env: str | None) -> list[Path]:
    """The allowed directories from --allow-path (repeated) and $XENIA_ALLOW_PATHS."""
    out: list[Path] = []
    for text in [*args, *(env.split(":") if env else [])]:
        text = text.strip()
        if not text:
            continue
        if not os.path.isabs(text):
            raise InvalidConfig(f"Failed to allow the path '{text}': give an absolute "
                                "directory to --allow-path")
        out.append(Path(os.path.realpath(text)))
    return out


def _inside(real: str, dirs: Iterable[str]) -> bool:
    return any(real == d or real.startswith(d.rstrip("/") + "/") for d in dirs)


def disk_path(spec: DiskSpec) -> str | None:
    """The host path a disk spec opens (xl's `phy:sda` is /dev/sda); None: an empty cdrom."""
    if spec.target is None or spec.format == "empty":
        return None
    if not spec.target.startswith("/") and spec.backendtype == "phy":
        return "/dev/" + spec.target
    return spec.target


def config_paths(cfg: DomainConfig) -> list[tuple[str, str]]:
    """(what, path) of every host file a domain config opens."""
    out = [(what, str(p)) for what, p in (("kernel", cfg.kernel), ("ramdisk", cfg.ramdisk),
                                          ("rootfs", cfg.rootfs)) if p]
    if cfg.firmware and cfg.firmware.startswith("/"):
        out.append(("firmware", cfg.firmware))
    for d in cfg.disks:
        path = disk_path(d)
        if path is not None:
            out.append((f"disk {d.vdev}", path))
    out += [(f"p9 share '{s.get('tag')}'", str(s.get("path"))) for s in cfg.p9]
    out += [("usbdev storage", str(d.get("path"))) for d in cfg.usbdev
            if d.get("type") == "storage"]
    out += [("vscsi pdev", str(d.get("pdev"))) for d in cfg.vscsi]
    return out


class PathRule:
    def __init__(self, allowed: Iterable[Path], pool_dirs: Callable[[], list[str]],
                 image_info: ImageInfo | None = None) -> None:
        self.allowed = [str(p) for p in allowed]
        self.pool_dirs = pool_dirs
        self.image_info = image_info

    def dirs(self) -> list[str]:
        return self.allowed + [os.path.realpath(d) for d in self.pool_dirs()]

    def check(self, path: str, what: str) -> str:
        """The resolved path, or PermissionDenied naming the path and how to allow it."""
        if not path or not os.path.isabs(path):
            raise PermissionDenied(
                f"Failed to use the {what} '{path}': over TCP a path must be absolute"
            )
        real = os.path.realpath(path)
        dirs = self.dirs()
        if _inside(real, dirs):
            return real
        shown = path if real == path else f"{path}' (resolved: '{real}"
        raise PermissionDenied(
            f"Failed to use the {what} '{shown}': over TCP, paths must lie inside a storage "
            f"pool's directory or a directory this host allows ({', '.join(dirs) or 'none'}); "
            "the host's admin can allow one with `xeniad --allow-path DIR` (or "
            f"${ALLOW_ENV})"
        )

    def check_disk(self, spec: DiskSpec, what: str) -> None:
        """The disk's path, and every file of its backing chain."""
        path = disk_path(spec)
        if path is None:
            return
        real = self.check(path, what)
        if spec.format not in LAYERED or self.image_info is None or not os.path.exists(real):
            return
        fmt: str | None = spec.format
        for _ in range(MAX_CHAIN):
            info = self.image_info(Path(real), fmt)
            # A qcow2 header can also name an external data file, which QEMU opens for the
            # guest's reads and writes. A relative name is taken from QEMU's working
            # directory, not the image's (QEMU 10, measured): check() refuses it.
            data_file = ((info.get("format-specific") or {}).get("data") or {}).get(
                "data-file")
            if data_file:
                self.check(str(data_file), f"data file of {what}")
            backing = info.get("full-backing-filename") or info.get("backing-filename")
            if not backing:
                return
            # Checked before qemu-img (or QEMU) ever opens it.
            real = self.check(str(backing), f"backing file of {what}")
            fmt = info.get("backing-filename-format")
        raise PermissionDenied(f"Failed to use the {what} '{path}': its backing chain is "
                               f"longer than {MAX_CHAIN} images")

    def check_config(self, cfg: DomainConfig) -> None:
        for what, path in config_paths(cfg):
            if what.startswith("disk "):
                continue
            self.check(path, what)
        for d in cfg.disks:
            self.check_disk(d, f"disk {d.vdev}")
