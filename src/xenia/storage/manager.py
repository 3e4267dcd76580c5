"""StorageManager: the pools and volumes of this host.

Pools are records in the store ("pool" documents: name, type, driver config); what a pool
holds is asked of its driver every time (for dir pools: the files and `qemu-img info`),
so nothing about volumes can drift from the disk.

Every method but start()/stop() blocks (it runs qemu-img). The API calls them from its
thread pool; async callers should use asyncio.to_thread for anything but quick lookups.
Changes to one pool are serialised by a lock per pool.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from xenia.errors import AlreadyExists, BackendError, InUse, InvalidConfig, NotFound, XeniaError
from xenia.paths import Paths
from xenia.storage.block import BlockDriver, check_block_device
from xenia.storage.dir import DirDriver
from xenia.storage.driver import VOLUME_FORMATS, PoolDriver, SnapshotInfo, VolumeInfo
from xenia.storage.lvm import LvmDriver
from xenia.storage.qemuimg import QemuImg
from xenia.storage.replica_records import EXPORT_KIND, export_key, replica_view
from xenia.storage.units import check_name, parse_size
from xenia.store.base import Store

log = logging.getLogger(__name__)

DEFAULT_POOL = "default"
POOL_KIND = "pool"
DRIVERS: dict[str, type[PoolDriver]] = {
    DirDriver.kind: DirDriver, BlockDriver.kind: BlockDriver, LvmDriver.kind: LvmDriver,
}

# fn(path) -> the name of a running domain that has the image open, or None.
InUseCheck = Callable[[str], str | None]


@dataclass(frozen=True)
class PoolInfo:
    name: str
    type: str
    location: str
    state: str  # "active" or "unavailable"
    volumes: int
    capacity: int
    available: int
    created_at: float
    error: str | None = None
    # Marked by the user as mounted by every cluster member (NFS, CephFS): the only pools
    # an HA domain's disks may be on (cluster/ha.py).
    shared: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StorageManager:
    def __init__(self, paths: Paths, store: Store, qemu_img: QemuImg | None = None) -> None:
        self.paths = paths
        self.store = store
        self.qemu_img = qemu_img or QemuImg()
        self._in_use: InUseCheck | None = None
        self._mounted: set[str] = set()
        self._locks: dict[str, threading.RLock] = {}
        self._locks_lock = threading.Lock()
        # Held while pools are created or deleted, so two cannot claim one directory.
        self._pools_lock = threading.RLock()

    @property
    def pools_dir(self) -> Path:
        return self.paths.state / "pools"

    # -- daemon --------------------------------------------------------------------------
    async def start(self) -> None:
        """Create the default pool if missing and mount every pool.

        A pool that cannot be mounted is reported as unavailable, not fatal: the other
        pools and every running domain must not depend on it.
        """
        if self.store.obj_get(POOL_KIND, DEFAULT_POOL) is None:
            try:
                self.create_pool(DEFAULT_POOL)
                log.info("created storage pool %s in %s", DEFAULT_POOL,
                         self.pools_dir / DEFAULT_POOL)
            except XeniaError as e:
                log.error("%s", e.message)
        for rec in self.store.obj_list(POOL_KIND):
            try:
                self._driver(rec["name"])
            except XeniaError as e:
                log.warning("storage pool %s is unavailable: %s", rec["name"], e.message)

    async def stop(self) -> None:
        for name in sorted(self._mounted):
            try:
                self._driver(name, mount=False).unmount()
            except XeniaError as e:
                log.warning("storage pool %s: %s", name, e.message)
        self._mounted.clear()

    def set_in_use_check(self, fn: InUseCheck | None) -> None:
        """Register how to learn whether a running domain uses an image.

        The domain engine registers fn(path) -> domain name or None. Volumes a domain
        uses are not deleted, resized, cloned, snapshotted or restored. fn is called from
        worker threads: it must only read (e.g. the store), not touch the event loop.
        """
        self._in_use = fn

    # -- helpers -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, pool: str) -> Iterator[None]:
        with self._locks_lock:
            lock = self._locks.setdefault(pool, threading.RLock())
        with lock:
            yield

    def _record(self, pool: str, doing: str) -> dict[str, Any]:
        check_name("pool", pool, doing)
        rec = self.store.obj_get(POOL_KIND, pool)
        if rec is None:
            raise NotFound(f"Failed {doing}: there is no pool '{pool}' (see `xenia pool list`)")
        return rec

    def _make_driver(self, rec: dict[str, Any], doing: str) -> PoolDriver:
        cls = DRIVERS.get(rec.get("type", ""))
        if cls is None:
            raise BackendError(f"Failed {doing}: pool '{rec['name']}' has type "
                               f"'{rec.get('type')}', which this xeniad does not know")
        return cls(rec["name"], rec.get("config", {}), self.qemu_img)

    def _driver(self, pool: str, doing: str | None = None, mount: bool = True) -> PoolDriver:
        doing = doing or f"to use pool '{pool}'"
        drv = self._make_driver(self._record(pool, doing), doing)
        if mount and pool not in self._mounted:
            drv.mount()
            self._mounted.add(pool)
        return drv

    def _user(self, path: Path) -> str | None:
        if self._in_use is None:
            return None
        return self._in_use(str(path))

    def _refuse_in_use(self, drv: PoolDriver, name: str, doing: str, why: str) -> None:
        served = self.store.obj_get(EXPORT_KIND, export_key(drv.name, name))
        if served is not None:
            raise InUse(f"Failed {doing}: it is the replica copy of a volume of "
                        f"{served.get('primary') or 'another host'}, served to it; delete "
                        "or resync the volume there first")
        if self._in_use is None:
            return
        paths = [drv.volume_path(name)]
        paths += [s.path for s in drv.list_snapshots(name)] if why == "delete" else []
        for path in paths:
            user = self._user(path)
            if user is not None:
                raise InUse(f"Failed {doing}: domain '{user}' uses {path}; {_HINTS[why]}")

    @contextlib.contextmanager
    def _os_errors(self, doing: str) -> Iterator[None]:
        """An OSError a driver did not expect still becomes a "Failed ..." message."""
        try:
            yield
        except OSError as e:
            raise BackendError(f"Failed {doing}: {e.strerror or e}"
                               f"{' (' + e.filename + ')' if e.filename else ''}") from e

    # -- pools ---------------------------------------------------------------------------
    def create_pool(self, name: str, type: str = "dir", path: str | None = None,
                    device: str | None = None, vg: str | None = None,
                    shared: bool = False) -> PoolInfo:
        doing = f"to create pool '{name}'"
        check_name("pool", name, doing)
        if type not in DRIVERS:
            raise InvalidConfig(f"Failed {doing}: unknown pool type '{type}' "
                                f"(known: {', '.join(sorted(DRIVERS))})")
        config = self._pool_config(name, type, path, device, vg, doing)
        with self._pools_lock, self._os_errors(doing):
            if self.store.obj_get(POOL_KIND, name) is not None:
                raise AlreadyExists(f"Failed {doing}: a pool of that name exists already")
            self._check_overlap(config, doing)
            rec: dict[str, Any] = {"name": name, "type": type, "created_at": time.time(),
                                   "config": config}
            if shared:
                rec["shared"] = True
            # Claim the name in the store first (it is also the record of what to clean
            # up should xeniad die while making the pool), then make the storage.
            self.store.obj_put(POOL_KIND, name, rec, create=True)
            with contextlib.ExitStack() as undo:
                undo.callback(self.store.obj_delete, POOL_KIND, name)
                drv = self._make_driver(rec, doing)
                rec["config"] = drv.create()
                undo.callback(self._make_driver(rec, doing).delete)
                self.store.obj_put(POOL_KIND, name, rec)
                self._driver(name, doing)
                undo.pop_all()
        return self.get_pool(name)

    def _pool_config(self, name: str, type: str, path: str | None, device: str | None,
                     vg: str | None, doing: str) -> dict[str, Any]:
        """The driver config a pool starts from; each type takes exactly its own option."""
        given = {"path": path, "device": device, "vg": vg}
        wanted = {"dir": "path", "block": "device", "lvm": "vg"}[type]
        extra = [k for k, v in given.items() if v is not None and k != wanted]
        if extra:
            raise InvalidConfig(f"Failed {doing}: a {type} pool takes no --{extra[0]} "
                                f"(it takes --{wanted})")
        if type == "block":
            if not device:
                raise InvalidConfig(f"Failed {doing}: a block pool needs --device /dev/X")
            return {"device": str(check_block_device(device, doing))}
        if type == "lvm":
            if not vg:
                raise InvalidConfig(f"Failed {doing}: an LVM pool needs --vg VOLUMEGROUP")
            return {"vg": vg}
        where = Path(path) if path else self.pools_dir / name
        if not where.is_absolute():
            raise InvalidConfig(f"Failed {doing}: the path {path} is not absolute")
        return {"path": os.path.normpath(where)}

    def _check_overlap(self, config: dict[str, Any], doing: str) -> None:
        for rec in self.store.obj_list(POOL_KIND):
            other = rec.get("config", {})
            for key in ("device", "vg"):
                mine = config.get(key)
                if mine and other.get(key) and (
                        os.path.realpath(mine) == os.path.realpath(other[key])
                        if key == "device" else mine == other[key]):
                    raise InvalidConfig(f"Failed {doing}: pool '{rec['name']}' uses {mine} "
                                        "already")
        if "path" in config:
            self._check_dir_overlap(Path(config["path"]), doing)

    def _check_dir_overlap(self, where: Path, doing: str) -> None:
        # Two pools on one directory would list each other's volumes and delete them.
        real = os.path.realpath(where)
        for rec in self.store.obj_list(POOL_KIND):
            other = rec.get("config", {}).get("path")
            if not other:
                continue
            oreal = os.path.realpath(other)
            if os.path.commonpath([real, oreal]) in (real, oreal):
                raise InvalidConfig(
                    f"Failed {doing}: {where} overlaps the directory {other} of pool "
                    f"'{rec['name']}'; pick a directory of its own"
                )

    def _pool_info(self, rec: dict[str, Any]) -> PoolInfo:
        name = rec["name"]
        doing = f"to read pool '{name}'"
        base = {"name": name, "type": rec.get("type", "?"),
                "location": _location(rec.get("config", {})),
                "created_at": rec.get("created_at", 0.0),
                "shared": bool(rec.get("shared", False))}
        try:
            drv = self._driver(name, doing)
            with self._os_errors(doing):
                usage = drv.usage()
                count = len(drv.volume_names())
        except XeniaError as e:
            return PoolInfo(**base, state="unavailable", volumes=0, capacity=0, available=0,
                            error=e.message)
        base["location"] = drv.location
        return PoolInfo(**base, state="active", volumes=count, capacity=usage.capacity,
                        available=usage.available)

    def list_pools(self) -> list[PoolInfo]:
        return [self._pool_info(rec) for rec in self.store.obj_list(POOL_KIND)]

    def get_pool(self, name: str) -> PoolInfo:
        return self._pool_info(self._record(name, f"to find pool '{name}'"))

    def delete_pool(self, name: str) -> None:
        doing = f"to delete pool '{name}'"
        with self._pools_lock, self._locked(name), self._os_errors(doing):
            rec = self._record(name, doing)
            drv = self._make_driver(rec, doing)
            try:
                drv.mount()
                names = drv.volume_names() if drv.owns_volumes else []
            except XeniaError:
                # An unavailable pool (its directory gone) holds nothing to lose: let
                # the user forget it.
                names = []
            if names:
                shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
                raise InUse(
                    f"Failed {doing}: it holds {len(names)} volume{'s' * (len(names) != 1)} "
                    f"({shown}); delete them first (`xenia volume delete --pool {name} NAME`)"
                )
            # Storage first, record last: if xeniad dies in between, the record remains
            # and `pool delete` can simply be run again.
            drv.delete()
            self.store.obj_delete(POOL_KIND, name)
            self._mounted.discard(name)

    # -- volumes -------------------------------------------------------------------------
    def list_volumes(self, pool: str = DEFAULT_POOL) -> list[VolumeInfo]:
        doing = f"to list the volumes of pool '{pool}'"
        drv = self._driver(pool, doing)
        with self._os_errors(doing):
            return drv.list_volumes()

    def get_volume(self, pool: str, name: str) -> VolumeInfo:
        doing = f"to find volume '{name}' in pool '{pool}'"
        check_name("volume", name, doing)
        drv = self._driver(pool, doing)
        with self._os_errors(doing):
            return drv.volume_info(name)

    def describe_volume(self, info: VolumeInfo) -> dict[str, Any]:
        """A volume as the API shows it: its info and the domain using it, if any."""
        d = info.to_dict()
        d["used_by"] = self._user(info.path)
        d["replica"] = replica_view(self.store, info.pool, info.name)
        return d

    def volume_path(self, pool: str, name: str) -> Path:
        """The file QEMU opens for the volume (NotFound if there is none)."""
        doing = f"to find volume '{name}' in pool '{pool}'"
        check_name("volume", name, doing)
        return self._driver(pool, doing).volume_path(name)

    def create_volume(self, pool: str, name: str, size: str | int,
                      fmt: str | None = None) -> VolumeInfo:
        """`fmt` None: the pool's first format (qcow2 in dir pools, raw on LVM)."""
        doing = f"to create volume '{name}' in pool '{pool}'"
        check_name("volume", name, doing)
        nbytes = parse_size(size, doing)
        if fmt is not None and fmt not in VOLUME_FORMATS:
            raise InvalidConfig(f"Failed {doing}: unknown format '{fmt}' "
                                f"(pick one of {', '.join(VOLUME_FORMATS)})")
        drv = self._driver(pool, doing)
        fmt = fmt or drv.formats[0]
        with self._locked(pool), self._os_errors(doing):
            return drv.create_volume(name, nbytes, fmt)

    def delete_volume(self, pool: str, name: str) -> None:
        doing = f"to delete volume '{name}' in pool '{pool}'"
        check_name("volume", name, doing)
        drv = self._driver(pool, doing)
        with self._locked(pool), self._os_errors(doing):
            self._refuse_in_use(drv, name, doing, "delete")
            drv.delete_volume(name)

    def clone_volume(self, pool: str, src: str, new: str, linked: bool = True) -> VolumeInfo:
        doing = f"to clone volume '{src}' to '{new}' in pool '{pool}'"
        check_name("volume", src, doing)
        check_name("volume", new, doing)
        drv = self._driver(pool, doing)
        with self._locked(pool), self._os_errors(doing):
            self._refuse_in_use(drv, src, doing, "clone")
            return drv.clone_volume(src, new, linked)

    def resize_volume(self, pool: str, name: str, size: str | int,
                      shrink: bool = False) -> VolumeInfo:
        """Set the virtual size; "+1G"/"-1G" change it by that much. Growing only, unless
        shrink=True (like qemu-img resize --shrink)."""
        doing = f"to resize volume '{name}' in pool '{pool}'"
        check_name("volume", name, doing)
        text = size.strip() if isinstance(size, str) else size
        relative = isinstance(text, str) and text[:1] in ("+", "-")
        delta = parse_size(text[1:] if isinstance(text, str) and relative else text, doing)
        drv = self._driver(pool, doing)
        with self._locked(pool), self._os_errors(doing):
            self._refuse_in_use(drv, name, doing, "resize")
            nbytes = delta
            if relative:
                current = drv.volume_info(name).virtual_size
                nbytes = current + delta if str(text).startswith("+") else current - delta
                if nbytes <= 0:
                    raise InvalidConfig(f"Failed {doing}: {size} would leave it no size at all")
            return drv.resize_volume(name, nbytes, shrink=shrink)

    # -- snapshots -----------------------------------------------------------------------
    def create_snapshot(self, pool: str, name: str, snap: str) -> SnapshotInfo:
        doing = f"to snapshot volume '{name}' as '{snap}' in pool '{pool}'"
        check_name("volume", name, doing)
        check_name("snapshot", snap, doing)
        drv = self._driver(pool, doing)
        with self._locked(pool), self._os_errors(doing):
            self._refuse_in_use(drv, name, doing, "snapshot")
            return drv.create_snapshot(name, snap)

    def list_snapshots(self, pool: str, name: str) -> list[SnapshotInfo]:
        doing = f"to list the snapshots of volume '{name}' in pool '{pool}'"
        check_name("volume", name, doing)
        drv = self._driver(pool, doing)
        with self._os_errors(doing):
            return drv.list_snapshots(name)

    def delete_snapshot(self, pool: str, name: str, snap: str) -> None:
        doing = f"to delete snapshot '{snap}' of volume '{name}' in pool '{pool}'"
        check_name("volume", name, doing)
        check_name("snapshot", snap, doing)
        drv = self._driver(pool, doing)
        with self._locked(pool), self._os_errors(doing):
            drv.delete_snapshot(name, snap)

    def restore_snapshot(self, pool: str, name: str, snap: str) -> VolumeInfo:
        doing = f"to restore volume '{name}' from snapshot '{snap}' in pool '{pool}'"
        check_name("volume", name, doing)
        check_name("snapshot", snap, doing)
        drv = self._driver(pool, doing)
        with self._locked(pool), self._os_errors(doing):
            self._refuse_in_use(drv, name, doing, "restore")
            return drv.restore_snapshot(name, snap)

    # -- for the domain engine -----------------------------------------------------------
    def image_info(self, path: str | Path, fmt: str | None = None) -> dict[str, Any]:
        """`qemu-img info --output=json -U` of any image, also one a running QEMU holds.

        Give `fmt` whenever it is known: without it qemu-img probes the format, and a raw
        image a guest wrote a qcow2 header into would read as qcow2.
        """
        p = Path(path)
        with self._os_errors(f"to read the image {p}"):
            return self.qemu_img.info(p, fmt, f"to read the image {p}")

    def shared_pool_of(self, path: str | Path) -> str | None:
        """The shared pool whose directory holds `path` (a volume or any file below it),
        or None: what HA checks of every disk (cluster/ha.py)."""
        real = os.path.realpath(path)
        for rec in self.store.obj_list(POOL_KIND):
            where = rec.get("config", {}).get("path")
            if not rec.get("shared") or not where:
                continue
            top = os.path.realpath(where)
            if os.path.commonpath([real, top]) == top and real != top:
                return str(rec["name"])
        return None

    def volume_at(self, path: str | Path) -> tuple[str, str] | None:
        """(pool, volume) whose image is `path`, or None if no pool volume is."""
        real = os.path.realpath(path)
        for rec in self.store.obj_list(POOL_KIND):
            try:
                drv = self._driver(rec["name"])
                for name in drv.volume_names():
                    if os.path.realpath(drv.volume_path(name)) == real:
                        return rec["name"], name
            except XeniaError:
                continue
        return None

    def dependents_of(self, path: str | Path) -> list[str]:
        """Images backed by the volume at `path` ("vol" or "vol@snap"); [] for a path that
        is no volume. The domain engine must not open an image writable while this is not
        empty: writing to the backing file of a thin clone corrupts the clone."""
        found = self.volume_at(path)
        if found is None:
            return []
        pool, name = found
        with self._os_errors(f"to find the images backed by {path}"):
            return self._driver(pool).dependents(name)


def _location(config: dict[str, Any]) -> str:
    return str(config.get("path") or config.get("device") or config.get("vg") or "?")


_HINTS = {
    "delete": "shut the domain down (or detach the disk) first",
    "clone": "a clone of a disk that is being written would not be consistent; "
             "shut the domain down first",
    "resize": "shut the domain down first (resizing the disk of a running domain is not "
              "supported yet)",
    "snapshot": "a copy taken while the guest writes would not be one point in time; "
                "shut the domain down first",
    "restore": "shut the domain down first",
}
