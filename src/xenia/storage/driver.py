"""PoolDriver: what a storage backend does for the StorageManager (after Incus's drivers).

One driver instance serves one pool. The verbs follow Incus's storage driver interface:
pool create/delete/mount/unmount, and volume create/delete/clone/resize/snapshot/list,
the path QEMU opens, and info. Rules every driver keeps:

- Each verb undoes its own partial work when it fails (rollback on failure): a failed
  create leaves no volume behind, a failed snapshot no half-written snapshot.
- A verb is all or nothing as seen from outside, also across a crash of xeniad: new images
  are written under a hidden temporary name and renamed into place at the end.
- Names reach a driver already checked (xenia.storage.units.check_name); drivers still
  build every path through one function that refuses anything but a plain name.
- Drivers do not know about domains; the StorageManager checks "in use by a domain".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from xenia.storage.qemuimg import QemuImg

VOLUME_FORMATS = ("qcow2", "raw")


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    volume: str
    path: Path
    format: str
    virtual_size: int
    allocation: int
    created: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    pool: str
    format: str
    path: Path
    virtual_size: int
    allocation: int
    # The backing image: its volume name when it is a volume of the same pool, else its path.
    backing: str | None = None
    backing_format: str | None = None
    backing_path: Path | None = None
    snapshots: list[str] = field(default_factory=list)
    # Set when the image cannot be read (corrupt, foreign); the sizes are then 0.
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["backing_path"] = str(self.backing_path) if self.backing_path else None
        return d


@dataclass(frozen=True)
class PoolUsage:
    capacity: int
    available: int


class PoolDriver(ABC):
    """The storage backend of one pool.

    `config` is the driver's part of the pool record in the store (e.g. {"path": ...});
    `create()` returns what to store there after the pool was made.
    """

    kind: ClassVar[str]
    # The volume formats this backend can hold (LVM: raw only).
    formats: ClassVar[tuple[str, ...]] = VOLUME_FORMATS
    # Whether the pool made its volumes (and a pool holding some may not be deleted);
    # a block pool's volumes are the device's partitions, the user's.
    owns_volumes: ClassVar[bool] = True

    def __init__(self, name: str, config: Mapping[str, Any], qemu_img: QemuImg) -> None:
        self.name = name
        self.config = dict(config)
        self.qemu_img = qemu_img

    # -- pool lifecycle ------------------------------------------------------------------
    @abstractmethod
    def create(self) -> dict[str, Any]:
        """Make the pool's storage; return the config to persist. Undoes itself on failure."""

    @abstractmethod
    def delete(self) -> None:
        """Remove what create() made. The caller checked that the pool holds no volumes."""

    @abstractmethod
    def mount(self) -> None:
        """Make the pool usable after a (host or daemon) start; idempotent.

        Also clears what a crash in the middle of a verb left behind.
        """

    @abstractmethod
    def unmount(self) -> None:
        """Called when xeniad stops; must not disturb volumes running domains use."""

    @abstractmethod
    def usage(self) -> PoolUsage: ...

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the pool lives, for people (a directory, a volume group, ...)."""

    # -- volumes -------------------------------------------------------------------------
    @abstractmethod
    def volume_names(self) -> list[str]:
        """Names of the pool's volumes, cheaply (no image is opened)."""

    @abstractmethod
    def list_volumes(self) -> list[VolumeInfo]: ...

    @abstractmethod
    def volume_info(self, name: str) -> VolumeInfo:
        """NotFound when there is no such volume."""

    @abstractmethod
    def volume_path(self, name: str) -> Path:
        """The file or block device QEMU opens for the volume; NotFound if none."""

    @abstractmethod
    def create_volume(self, name: str, size: int, fmt: str) -> VolumeInfo:
        """A new empty volume; AlreadyExists when the name is taken."""

    @abstractmethod
    def delete_volume(self, name: str) -> None:
        """Delete the volume and its snapshots; InUse when other images are backed by it."""

    @abstractmethod
    def clone_volume(self, src: str, new: str, linked: bool = True) -> VolumeInfo:
        """A new volume with src's content: `linked`, sharing what it can with src (thin;
        src must not be written to any more, dependents() names the images relying on
        it); else a full, independent copy.
        """

    @abstractmethod
    def resize_volume(self, name: str, size: int, shrink: bool = False) -> VolumeInfo:
        """Set the virtual size; a smaller size only with shrink=True (data is lost)."""

    @abstractmethod
    def dependents(self, name: str) -> list[str]:
        """Images of this pool backed by the volume: "vol" or "vol@snapshot" names."""

    # -- snapshots -----------------------------------------------------------------------
    @abstractmethod
    def create_snapshot(self, name: str, snap: str) -> SnapshotInfo:
        """A read-only point-in-time copy of the volume; the volume itself is not changed.

        The volume must not be written meanwhile (the caller checks it is not in use).
        """

    @abstractmethod
    def list_snapshots(self, name: str) -> list[SnapshotInfo]: ...

    @abstractmethod
    def delete_snapshot(self, name: str, snap: str) -> None: ...

    @abstractmethod
    def restore_snapshot(self, name: str, snap: str) -> VolumeInfo:
        """Put the snapshot's content back into the volume (the snapshot stays)."""
