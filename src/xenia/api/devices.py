"""Device routes: disks, cdroms, NICs, memory, vCPUs, PCI of a domain."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from xenia.api.deps import Manager
from xenia.config.diskspec import parse_disk_args
from xenia.config.vifspec import parse_vif_spec

router = APIRouter(prefix="/v1/domains/{ref}")


class SpecRequest(BaseModel):
    args: list[str]  # the spec as xl takes it: one string, or several components


class CdRequest(BaseModel):
    target: str
    format: str = "raw"


class MemRequest(BaseModel):
    mib: int


class VcpuRequest(BaseModel):
    count: int


@router.get("/disks")
async def disks(ref: str, m: Manager) -> list[dict[str, Any]]:
    rec = m.resolve(ref)
    return [asdict(d) for d in rec.config.disks]


@router.post("/disks", status_code=201)
async def block_attach(ref: str, req: SpecRequest, m: Manager) -> dict[str, Any]:
    spec = parse_disk_args(req.args)
    await m.block_attach(ref, spec)
    return asdict(spec)


@router.delete("/disks/{vdev}")
async def block_detach(ref: str, vdev: str, m: Manager) -> dict[str, Any]:
    await m.block_detach(ref, vdev)
    return {}


@router.post("/cdrom/{vdev}")
async def cd_insert(ref: str, vdev: str, req: CdRequest, m: Manager) -> dict[str, Any]:
    await m.cd_insert(ref, vdev, req.target, req.format)
    return {}


@router.delete("/cdrom/{vdev}")
async def cd_eject(ref: str, vdev: str, m: Manager) -> dict[str, Any]:
    await m.cd_eject(ref, vdev)
    return {}


@router.get("/nics")
async def nics(ref: str, m: Manager) -> list[dict[str, Any]]:
    rec = m.resolve(ref)
    taps = rec.runtime.get("taps", {})
    return [dict(asdict(v), tap=taps.get(str(v.devid))) for v in rec.config.vifs]


@router.post("/nics", status_code=201)
async def network_attach(ref: str, req: SpecRequest, m: Manager) -> dict[str, Any]:
    vif = parse_vif_spec(",".join(req.args), strict=True)
    await m.network_attach(ref, vif)
    return asdict(vif)


@router.delete("/nics/{devid}")
async def network_detach(ref: str, devid: str, m: Manager) -> dict[str, Any]:
    await m.network_detach(ref, devid)
    return {}


@router.get("/pci")
async def pci_list(ref: str, m: Manager) -> list[dict[str, Any]]:
    return await m.pci_list(ref)


@router.post("/memory")
async def mem_set(ref: str, req: MemRequest, m: Manager) -> dict[str, Any]:
    await m.mem_set(ref, req.mib)
    return {}


@router.post("/maxmem")
async def mem_max(ref: str, req: MemRequest, m: Manager) -> dict[str, Any]:
    await m.mem_max(ref, req.mib)
    return {}


@router.post("/vcpus")
async def vcpu_set(ref: str, req: VcpuRequest, m: Manager) -> dict[str, Any]:
    await m.vcpu_set(ref, req.count)
    return {}
