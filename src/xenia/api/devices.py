"""Device routes: disks, cdroms, NICs, memory, vCPUs, PCI of a domain."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from xenia.api.access import Acc
from xenia.api.deps import Devices, Manager, Views
from xenia.config.cpulist import MAX_CPULIST
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
async def block_attach(ref: str, req: SpecRequest, d: Devices, a: Acc) -> dict[str, Any]:
    # Parsing is linear but a body may be 1 MiB of spec: off the event loop.
    spec = await asyncio.to_thread(parse_disk_args, req.args)
    await asyncio.to_thread(a.check_disk, spec, f"disk {spec.vdev}")
    await d.block_attach(ref, spec)
    return asdict(spec)


@router.delete("/disks/{vdev}")
async def block_detach(ref: str, vdev: str, d: Devices) -> dict[str, Any]:
    await d.block_detach(ref, vdev)
    return {}


@router.post("/cdrom/{vdev}")
async def cd_insert(ref: str, vdev: str, req: CdRequest, d: Devices, a: Acc
                    ) -> dict[str, Any]:
    spec = DiskSpec(vdev=vdev, target=req.target or None, format=req.format, devtype="cdrom")
    await asyncio.to_thread(a.check_disk, spec, f"cdrom {vdev}")
    await d.cd_insert(ref, vdev, req.target, req.format)
    return {}


@router.delete("/cdrom/{vdev}")
async def cd_eject(ref: str, vdev: str, d: Devices) -> dict[str, Any]:
    await d.cd_eject(ref, vdev)
    return {}


@router.get("/nics")
async def nics(ref: str, m: Manager) -> list[dict[str, Any]]:
    rec = m.resolve(ref)
    taps = rec.runtime.get("taps", {})
    return [dict(asdict(v), tap=taps.get(str(v.devid))) for v in rec.config.vifs]


@router.post("/nics", status_code=201)
async def network_attach(ref: str, req: SpecRequest, d: Devices) -> dict[str, Any]:
    vif = await asyncio.to_thread(parse_vif_spec, ",".join(req.args), strict=True)
    await d.network_attach(ref, vif)
    return asdict(vif)


@router.delete("/nics/{devid}")
async def network_detach(ref: str, devid: str, d: Devices) -> dict[str, Any]:
    await d.network_detach(ref, devid)
    return {}


@router.get("/pci")
async def pci_list(ref: str, d: Devices) -> list[dict[str, Any]]:
    return await d.pci_list(ref)


@router.post("/memory")
async def mem_set(ref: str, req: MemRequest, d: Devices) -> dict[str, Any]:
    await d.mem_set(ref, req.mib)
    return {}


@router.post("/maxmem")
async def mem_max(ref: str, req: MemRequest, d: Devices) -> dict[str, Any]:
    await d.mem_max(ref, req.mib)
    return {}


@router.post("/vcpus")
async def vcpu_set(ref: str, req: VcpuRequest, d: Devices) -> dict[str, Any]:
    await d.vcpu_set(ref, req.count)
    return {}


class PinRequest(BaseModel):
    vcpu: Annotated[str, Field(max_length=16)]  # a number or "all"
    # Refused past MAX_CPULIST characters before anything reads it (a 422).
    hard: Annotated[str, Field(max_length=MAX_CPULIST)]


class SchedRequest(BaseModel):
    weight: int | None = None
    cap: int | None = None


class PciRequest(BaseModel):
    bdf: str


@router.post("/vcpu-pin")
async def vcpu_pin(ref: str, req: PinRequest, d: Devices) -> dict[str, Any]:
    await d.vcpu_pin(ref, req.vcpu, req.hard)
    return {}


@router.post("/sched-credit")
async def sched_credit_set(ref: str, req: SchedRequest, d: Devices) -> dict[str, Any]:
    await d.sched_credit_set(ref, req.weight, req.cap)
    return d.sched_credit([ref])[0]


@router.post("/pci", status_code=201)
async def pci_attach(ref: str, req: PciRequest, d: Devices) -> dict[str, Any]:
    await d.pci_attach(ref, req.bdf)
    return {}


@router.delete("/pci/{bdf}")
async def pci_detach(ref: str, bdf: str, d: Devices) -> dict[str, Any]:
    await d.pci_detach(ref, bdf)
    return {}


host_router = APIRouter(prefix="/v1")
DomainRefs = Annotated[list[str] | None, Query()]


@host_router.get("/stats")
async def stats(v: Views, a: Acc) -> list[dict[str, Any]]:
    return a.visible(await v.stats())


@host_router.get("/vcpus")
async def vcpu_list(d: Devices, a: Acc, domain: DomainRefs = None) -> list[dict[str, Any]]:
    return a.visible(await d.vcpu_list(domain or []))


@host_router.get("/sched-credit")
async def sched_credit(d: Devices, a: Acc, domain: DomainRefs = None) -> list[dict[str, Any]]:
    return a.visible(d.sched_credit(domain or []))


@host_router.get("/pci-assignable")
async def pci_assignable_list(d: Devices) -> list[dict[str, Any]]:
    return d.assignable_list()


@host_router.post("/pci-assignable", status_code=201)
async def pci_assignable_add(req: PciRequest, d: Devices) -> dict[str, Any]:
    return d.assignable_add(req.bdf)


@host_router.delete("/pci-assignable/{bdf}")
async def pci_assignable_remove(bdf: str, d: Devices, rebind: bool = False) -> dict[str, Any]:
    d.assignable_remove(bdf, rebind)
    return {}


@router.get("/screenshot")
async def screenshot(ref: str, d: Devices) -> dict[str, Any]:
    png = await d.screenshot(ref)
    return {"png": base64.b64encode(png).decode()}
