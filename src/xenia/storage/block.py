"""BlockDriver: a pool that is one block device (a disk, partition or loop device).

The pool's volumes are what the kernel shows: the device's partitions, or the whole device
when it has none. Xenia does not partition: making, deleting, resizing, cloning or
snapshotting a volume is refused with a message naming the tool that does it. A volume is
attached as `format=raw` on the device (Xen's `phy:`); QEMU opens it as a host_device.

Config: {"device": "/dev/X"}. The device must not be mounted or held by another user
(an O_EXCL open is the kernel's own test of that) when the pool is created.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, NoReturn

from xenia.errors import BackendError, InvalidConfig, NotFound, NotSupported
from xenia.storage.driver import PoolDriver, PoolUsage, SnapshotInfo, VolumeInfo
from xenia.storage.units import valid_name

SYS_BLOCK = Path("/sys/class/block")


def check_block_device(device: str, doing: str) -> Path:
    """The device's path if it is an absolute path to a block device, else InvalidConfig."""
    path = Path(device)
    if not path.is_absolute():
        raise InvalidConfig(f"Failed {doing}: the device {device} is not an absolute path")
    try:
        st = path.stat()
    except FileNotFoundError:
        raise NotFound(f"Failed {doing}: {device} does not exist") from None
    except OSError as e:
        raise InvalidConfig(f"Failed {doing}: cannot read {device}: {e.strerror}") from None
    if not stat.S_ISBLK(st.st_mode):
        raise InvalidConfig(f"Failed {doing}: {device} is not a block device "
                            "(use a dir pool for image files, or `losetup` to make one)")
    return path


def device_size(name: str) -> int:
    """Bytes of /sys/class/block/<name> (the kernel counts 512-byte sectors)."""
    try:
        return int((SYS_BLOCK / name / "size").read_text()) * 512
    except (OSError, ValueError):
        return 0


class BlockDriver(PoolDriver):
    kind = "block"
    formats = ("raw",)
    owns_volumes = False

    @property
    def device(self) -> Path:
        return Path(self.config["device"])

    @property
    def location(self) -> str:
        return str(self.device)

    def _kname(self) -> str:
        """The kernel's name of the device (sdb, loop0), also behind a /dev/disk/... link."""
        return os.path.basename(os.path.realpath(self.device))

    def _partitions(self) -> list[str]:
        base = SYS_BLOCK / self._kname()
        try:
            return sorted(p.name for p in base.iterdir() if (p / "partition").exists())
        except OSError as e:
            raise BackendError(f"Failed to read pool '{self.name}': {base}: {e.strerror}") from e

    def _refuse(self, doing: str) -> NoReturn:
        raise NotSupported(
            f"Failed {doing}: the volumes of block pool '{self.name}' are the partitions of "
            f"{self.device}; change them with a partitioning tool (sfdisk, parted) and they "
            "appear here"
        )

    # -- pool lifecycle ------------------------------------------------------------------
    def create(self) -> dict[str, Any]:
        doing = f"to create pool '{self.name}'"
        path = check_block_device(str(self.device), doing)
        try:
            # O_EXCL on a block device fails with EBUSY while it is mounted, a PV of an
            # active VG, a RAID member or open exclusively elsewhere.
            fd = os.open(path, os.O_RDONLY | os.O_EXCL)
        except OSError as e:
            raise InvalidConfig(f"Failed {doing}: {path} is in use ({e.strerror}); unmount "
                                "it or pick a free device") from e
        os.close(fd)
        return {"device": str(path)}

    def delete(self) -> None:
        pass  # the device is the user's; nothing of ours is on it

    def mount(self) -> None:
        check_block_device(str(self.device), f"to mount pool '{self.name}'")

    def unmount(self) -> None:
        pass

    def usage(self) -> PoolUsage:
        return PoolUsage(capacity=device_size(self._kname()), available=0)

    # -- volumes -------------------------------------------------------------------------
    def volume_names(self) -> list[str]:
        parts = self._partitions()
        names = parts or [self._kname()]
        return [n for n in names if valid_name(n)]

    def volume_path(self, name: str) -> Path:
        if name not in self.volume_names():
            raise NotFound(f"Failed to find volume '{name}' in pool '{self.name}': no such "
                           f"volume (see `xenia volume list --pool {self.name}`)")
        if name == self._kname():
            return self.device
        return Path("/dev") / name

    def volume_info(self, name: str) -> VolumeInfo:
        return VolumeInfo(name=name, pool=self.name, format="raw",
                          path=self.volume_path(name), virtual_size=device_size(name),
                          allocation=device_size(name))

    def list_volumes(self) -> list[VolumeInfo]:
        return [self.volume_info(n) for n in self.volume_names()]

    def create_volume(self, name: str, size: int, fmt: str) -> VolumeInfo:
        self._refuse(f"to create volume '{name}'")

    def delete_volume(self, name: str) -> None:
        self._refuse(f"to delete volume '{name}'")

    def clone_volume(self, src: str, new: str, linked: bool = True) -> VolumeInfo:
        self._refuse(f"to clone volume '{src}'")

    def resize_volume(self, name: str, size: int, shrink: bool = False) -> VolumeInfo:
        self._refuse(f"to resize volume '{name}'")

    def dependents(self, name: str) -> list[str]:
        return []

    # -- snapshots -----------------------------------------------------------------------
    def create_snapshot(self, name: str, snap: str) -> SnapshotInfo:
        raise NotSupported(f"Failed to snapshot volume '{name}': a block pool cannot hold "
                           "snapshots (use an LVM or dir pool)")

    def list_snapshots(self, name: str) -> list[SnapshotInfo]:
        self.volume_path(name)
        return []

    def delete_snapshot(self, name: str, snap: str) -> None:
        raise NotFound(f"Failed to delete snapshot '{snap}' of volume '{name}': block pools "
                       "hold no snapshots")

    def restore_snapshot(self, name: str, snap: str) -> VolumeInfo:
        raise NotFound(f"Failed to restore volume '{name}' from '{snap}': block pools hold "
                       "no snapshots")
