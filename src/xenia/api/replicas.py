"""Replicated volume routes: create and resync on the primary (admin), and the replica
host's side, which a peer calls (migrate or cluster scope, like an incoming migration)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from xenia.api.access import Acc
from xenia.api.deps import ReplicaExportsDep, ReplicationDep

router = APIRouter(prefix="/v1")


class ReplicatedCreate(BaseModel):
    name: str
    size: str | int
    replica: str  # the peer (or cluster member) that keeps the copy
    format: str | None = None


class Resync(BaseModel):
    replica: str | None = None  # None: the same host again


class ServeReplica(BaseModel):
    pool: str
    volume: str
    size: int
    format: str
    listen_host: str  # the address the primary reached this host at
    identity: str
    key: str
    primary: str = ""
    primary_path: str = ""  # the primary's image: an HA failover maps it to this copy


@router.post("/pools/{pool}/replicated-volumes", status_code=201)
async def replicated_create(pool: str, req: ReplicatedCreate,
                            r: ReplicationDep) -> dict[str, Any]:
    return await r.create_volume(pool, req.name, req.size, req.format, req.replica)


@router.post("/pools/{pool}/volumes/{name}/resync")
async def volume_resync(pool: str, name: str, req: Resync,
                        r: ReplicationDep) -> dict[str, Any]:
    return await r.resync(pool, name, req.replica)


@router.get("/replicas")
def replicas(e: ReplicaExportsDep, a: Acc) -> list[dict[str, Any]]:
    rows = e.list()
    if a.grant is None or a.grant.has("read") or a.grant.has("admin"):
        return rows
    # A peer's token (migrate, cluster) sees the exports it made, not other peers'.
    return [r for r in rows if r.get("owner") == a.token]


@router.post("/replicas", status_code=201)
async def replica_serve(req: ServeReplica, e: ReplicaExportsDep, a: Acc) -> dict[str, Any]:
    # The export belongs to the caller's token: only it may serve it again or end it.
    return await asyncio.to_thread(e.serve, req.pool, req.volume, req.size, req.format,
                                   req.listen_host, req.identity, req.key, req.primary,
                                   req.primary_path, a.token)


@router.delete("/replicas/{pool}/{name}")
def replica_drop(pool: str, name: str, e: ReplicaExportsDep, a: Acc) -> dict[str, Any]:
    admin = a.grant is None or a.grant.has("admin")
    e.drop(pool, name, None if admin else a.token)
    return {}
