"""Device routes: disks, cdroms, NICs, memory, vCPUs, PCI of a domain."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from xenia.api.access import Acc
from xenia.api.deps import Manager
from xenia.config.diskspec import parse_disk_args
from xenia.config.model import DiskSpec
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
async def block_attach(ref: str, req: SpecRequest, m: Manager, a: Acc) -> dict[str, Any]:
    # Parsing is linear but a body may be 1 MiB of spec: off the event loop.
    spec = await asyncio.to_thread(parse_disk_args, req.args)
    await asyncio.to_thread(a.check_disk, spec, f"disk {spec.vdev}")
    await m.block_attach(ref, spec)
    return asdict(spec)


@router.delete("/disks/{vdev}")
async def block_detach(ref: str, vdev: str, m: Manager) -> dict[str, Any]:
    await m.block_detach(ref, vdev)
    return {}


@router.post("/cdrom/{vdev}")
async def cd_insert(ref: str, vdev: str, req: CdRequest, m: Manager, a: Acc
                    ) -> dict[str, Any]:
    spec = DiskSpec(vdev=vdev, target=req.target or None, format=req.format, devtype="cdrom")
    await asyncio.to_thread(a.check_disk, spec, f"cdrom {vdev}")
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
    vif = await asyncio.to_thread(parse_vif_spec, ",".join(req.args), strict=True)
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


class PinRequest(BaseModel):
    vcpu: str
    hard: str


class SchedRequest(BaseModel):
    weight: int | None = None
    cap: int | None = None


class PciRequest(BaseModel):
    bdf: str


@router.post("/vcpu-pin")
async def vcpu_pin(ref: str, req: PinRequest, m: Manager) -> dict[str, Any]:
    await m.vcpu_pin(ref, req.vcpu, req.hard)
    return {}


@router.post("/sched-credit")
async def sched_credit_set(ref: str, req: SchedRequest, m: Manager) -> dict[str, Any]:
    await m.sched_credit_set(ref, req.weight, req.cap)
    return m.sched_credit([ref])[0]


@router.post("/pci", status_code=201)
async def pci_attach(ref: str, req: PciRequest, m: Manager) -> dict[str, Any]:
    await m.pci_attach(ref, req.bdf)
    return {}


@router.delete("/pci/{bdf}")
async def pci_detach(ref: str, bdf: str, m: Manager) -> dict[str, Any]:
    await m.pci_detach(ref, bdf)
    return {}


host_router = APIRouter(prefix="/v1")
Domains = Annotated[list[str] | None, Query()]


@host_router.get("/stats")
async def stats(m: Manager, a: Acc) -> list[dict[str, Any]]:
    return a.visible(await m.stats())


@host_router.get("/vcpus")
async def vcpu_list(m: Manager, a: Acc, domain: Domains = None) -> list[dict[str, Any]]:
    return a.visible(await m.vcpu_list(domain or []))


@host_router.get("/sched-credit")
async def sched_credit(m: Manager, a: Acc, domain: Domains = None) -> list[dict[str, Any]]:
    return a.visible(m.sched_credit(domain or []))


@host_router.get("/pci-assignable")
async def pci_assignable_list(m: Manager) -> list[dict[str, Any]]:
    return m.pci.list()


@host_router.post("/pci-assignable", status_code=201)
async def pci_assignable_add(req: PciRequest, m: Manager) -> dict[str, Any]:
    return m.pci.add(req.bdf)


@host_router.delete("/pci-assignable/{bdf}")
async def pci_assignable_remove(bdf: str, m: Manager, rebind: bool = False) -> dict[str, Any]:
    from xenia.host.pci import normalize_bdf

    m.pci.remove(bdf, rebind, m.pci_user(normalize_bdf(bdf)))
    return {}


@router.get("/screenshot")
async def screenshot(ref: str, m: Manager) -> dict[str, Any]:
    import base64

    png = await m.screenshot(ref)
    return {"png": base64.b64encode(png).decode()}
