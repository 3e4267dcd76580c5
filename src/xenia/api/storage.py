"""Storage routes: pools and volumes, thin handlers over the StorageManager.

Handlers are plain functions, not coroutines: the manager blocks on qemu-img, and FastAPI
runs plain handlers in its thread pool, so a long copy does not stall the event loop
(and with it QMP events of running domains).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from xenia.api.access import Acc, Access
from xenia.api.deps import ReplicationDep, Storage
from xenia.storage.driver import VolumeInfo
from xenia.storage.manager import StorageManager

router = APIRouter(prefix="/v1")


class PoolCreate(BaseModel):
    name: str
    type: str = "dir"
    path: str | None = None
    device: str | None = None  # block pools
    vg: str | None = None  # LVM pools
    shared: bool = False  # a directory every cluster member mounts (HA domains' disks)


class VolumeCreate(BaseModel):
    name: str
    size: str | int
    format: str | None = None  # the pool's first format


class VolumeClone(BaseModel):
    name: str
    linked: bool = True  # a thin overlay backed by the source; False: a full copy


class VolumeResize(BaseModel):
    size: str | int
    shrink: bool = False


class SnapshotCreate(BaseModel):
    name: str


# -- pools -------------------------------------------------------------------------------
@router.get("/pools")
def pools(s: Storage) -> list[dict[str, Any]]:
    return [p.to_dict() for p in s.list_pools()]


@router.post("/pools", status_code=201)
def pool_create(req: PoolCreate, s: Storage, a: Acc) -> dict[str, Any]:
    if req.path is not None:
        a.check_path(req.path, "pool directory")
    if req.device is not None:
        a.check_path(req.device, "pool device")
    if req.vg is not None:
        # A VG is not a path, but its LVs are: /dev/VG/LV.
        a.check_path(f"/dev/{req.vg}", "pool volume group")
    return s.create_pool(req.name, type=req.type, path=req.path, device=req.device,
                         vg=req.vg, shared=req.shared).to_dict()


@router.get("/pools/{pool}")
def pool_get(pool: str, s: Storage) -> dict[str, Any]:
    return s.get_pool(pool).to_dict()


@router.delete("/pools/{pool}")
def pool_delete(pool: str, s: Storage) -> dict[str, Any]:
    s.delete_pool(pool)
    return {}


# -- volumes -----------------------------------------------------------------------------
def _view(s: StorageManager, a: Access, info: VolumeInfo) -> dict[str, Any]:
    """A volume as this caller may see it: the name of a domain outside its token's
    patterns that uses it is hidden."""
    d = s.describe_volume(info)
    d["used_by"] = a.shown(d.get("used_by"))
    return d


@router.get("/pools/{pool}/volumes")
def volumes(pool: str, s: Storage, a: Acc) -> list[dict[str, Any]]:
    return [_view(s, a, v) for v in s.list_volumes(pool)]


@router.post("/pools/{pool}/volumes", status_code=201)
def volume_create(pool: str, req: VolumeCreate, s: Storage, a: Acc) -> dict[str, Any]:
    return _view(s, a, s.create_volume(pool, req.name, req.size, req.format))


@router.get("/pools/{pool}/volumes/{name}")
def volume_get(pool: str, name: str, s: Storage, a: Acc) -> dict[str, Any]:
    return _view(s, a, s.get_volume(pool, name))


@router.delete("/pools/{pool}/volumes/{name}")
def volume_delete(pool: str, name: str, s: Storage, r: ReplicationDep) -> dict[str, Any]:
    s.delete_volume(pool, name)
    r.forget(pool, name)  # a replicated volume: its copy elsewhere is no longer served
    return {}


@router.post("/pools/{pool}/volumes/{name}/clone", status_code=201)
def volume_clone(pool: str, name: str, req: VolumeClone, s: Storage, a: Acc
                 ) -> dict[str, Any]:
    return _view(s, a, s.clone_volume(pool, name, req.name, req.linked))


@router.post("/pools/{pool}/volumes/{name}/resize")
def volume_resize(pool: str, name: str, req: VolumeResize, s: Storage, a: Acc
                  ) -> dict[str, Any]:
    return _view(s, a, s.resize_volume(pool, name, req.size, shrink=req.shrink))


# -- snapshots ---------------------------------------------------------------------------
@router.get("/pools/{pool}/volumes/{name}/snapshots")
def snapshots(pool: str, name: str, s: Storage) -> list[dict[str, Any]]:
    return [snap.to_dict() for snap in s.list_snapshots(pool, name)]


@router.post("/pools/{pool}/volumes/{name}/snapshots", status_code=201)
def snapshot_create(pool: str, name: str, req: SnapshotCreate, s: Storage) -> dict[str, Any]:
    return s.create_snapshot(pool, name, req.name).to_dict()


@router.delete("/pools/{pool}/volumes/{name}/snapshots/{snap}")
def snapshot_delete(pool: str, name: str, snap: str, s: Storage) -> dict[str, Any]:
    s.delete_snapshot(pool, name, snap)
    return {}


@router.post("/pools/{pool}/volumes/{name}/snapshots/{snap}/restore")
def snapshot_restore(pool: str, name: str, snap: str, s: Storage, a: Acc
                     ) -> dict[str, Any]:
    return _view(s, a, s.restore_snapshot(pool, name, snap))
