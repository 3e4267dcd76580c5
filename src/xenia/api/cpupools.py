"""Routes of xl's cpupool-* commands (host/cpupools.py does the work)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from xenia.config.cpulist import MAX_CPULIST
from xenia.host.cpupools import CpuPools

router = APIRouter(prefix="/v1")


def _pools(request: Request) -> CpuPools:
    return CpuPools(request.app.state.engine.manager)


Pools = Annotated[CpuPools, Depends(_pools)]


# A CPU list is refused past MAX_CPULIST characters before anything reads it (a 422).
CpuList = Annotated[str, Field(max_length=MAX_CPULIST)]


class PoolRequest(BaseModel):
    name: str
    cpus: CpuList


class NameRequest(BaseModel):
    name: str


class CpusRequest(BaseModel):
    cpus: CpuList
    remove: bool = False


class MoveRequest(BaseModel):
    pool: str


@router.get("/cpupools")
async def list_pools(p: Pools) -> list[dict[str, Any]]:
    return p.list()


@router.post("/cpupools", status_code=201)
async def create(req: PoolRequest, p: Pools) -> dict[str, Any]:
    await p.create(req.name, req.cpus)
    return {}


@router.post("/cpupools-numa-split")
async def numa_split(p: Pools) -> dict[str, Any]:
    await p.numa_split()
    return {}


@router.delete("/cpupools/{name}")
async def destroy(name: str, p: Pools) -> dict[str, Any]:
    p.destroy(name)
    return {}


@router.post("/cpupools/{name}/rename")
async def rename(name: str, req: NameRequest, p: Pools) -> dict[str, Any]:
    p.rename(name, req.name)
    return {}


@router.post("/cpupools/{name}/cpus")
async def cpus(name: str, req: CpusRequest, p: Pools) -> dict[str, Any]:
    await (p.cpu_remove if req.remove else p.cpu_add)(name, req.cpus)
    return {}


@router.post("/domains/{ref}/cpupool")
async def migrate(ref: str, req: MoveRequest, p: Pools) -> dict[str, Any]:
    await p.migrate(ref, req.pool)
    return {}
