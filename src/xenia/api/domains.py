"""Domain routes: create, list, lifecycle verbs."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from xenia.api.access import Acc
from xenia.api.deps import ClonesDep, Manager, Saves, Views
from xenia.config.model import DomainConfig
from xenia.errors import InvalidConfig
from xenia.migration.snapshots import split_ref

router = APIRouter(prefix="/v1")


class CreateRequest(BaseModel):
    config: dict[str, Any]
    paused: bool = False


class ShutdownRequest(BaseModel):
    wait: bool = False


class RebootRequest(BaseModel):
    force: bool = False


class RenameRequest(BaseModel):
    name: str


class WaitRequest(BaseModel):
    timeout: float | None = None


@router.get("/host")
async def host(v: Views) -> dict[str, Any]:
    return v.host_info()


@router.get("/domains")
async def domains(v: Views, a: Acc) -> list[dict[str, Any]]:
    return a.visible(v.list())


@router.post("/domains", status_code=201)
async def create(req: CreateRequest, m: Manager, v: Views, a: Acc,
                 clones: ClonesDep) -> dict[str, Any]:
    try:
        cfg = DomainConfig.from_dict(req.config)
    except (TypeError, ValueError) as e:
        raise InvalidConfig(f"Failed to read the domain config: {e}") from e
    if cfg.from_snapshot:
        # xl.cfg's from_snapshot: the snapshot's machine under this config's name. The
        # snapshot's domain must be the token's too (as clone-start checks it): else a
        # token limited to web-* could boot a copy of db-1's disks and memory.
        doing = f"to create domain '{cfg.name}'"
        source, _ = split_ref(cfg.from_snapshot, doing)
        a.require_domain(source, f"{doing} from a snapshot of '{source}'", audit=False)
        a.require_domain(cfg.name, doing)

        def admit(c: DomainConfig) -> None:
            a.check_config(c, f"to create domain '{c.name}'")

        return v.describe(await clones.start(cfg.from_snapshot, cfg.name, req.paused, admit))
    # Its name and host paths, for a token (qemu-img reads backing chains: off the loop).
    await asyncio.to_thread(a.check_config, cfg, f"to create domain '{cfg.name}'")
    rec = await m.create(cfg, paused=req.paused)
    return v.describe(rec)


@router.get("/domains/{ref}")
async def get(ref: str, m: Manager, v: Views) -> dict[str, Any]:
    return v.describe(m.resolve(ref))


@router.delete("/domains/{ref}")
async def destroy(ref: str, m: Manager) -> dict[str, Any]:
    await m.destroy(ref)
    return {}


@router.post("/domains/{ref}/shutdown")
async def shutdown(ref: str, req: ShutdownRequest, m: Manager) -> dict[str, Any]:
    await m.shutdown(ref, wait=req.wait)
    return {}


@router.post("/domains/{ref}/reboot")
async def reboot(ref: str, req: RebootRequest, m: Manager) -> dict[str, Any]:
    await m.reboot(ref, force=req.force)
    return {}


@router.post("/domains/{ref}/pause")
async def pause(ref: str, m: Manager) -> dict[str, Any]:
    await m.pause(ref)
    return {}


@router.post("/domains/{ref}/unpause")
async def unpause(ref: str, m: Manager) -> dict[str, Any]:
    await m.unpause(ref)
    return {}


@router.post("/domains/{ref}/start")
async def start(ref: str, m: Manager, v: Views) -> dict[str, Any]:
    """Boot a preserved (shutdown, crashed) domain again: its view, running."""
    return v.describe(await m.start(ref))


@router.post("/domains/{ref}/rename")
async def rename(ref: str, req: RenameRequest, m: Manager, v: Views, a: Acc
                 ) -> dict[str, Any]:
    # A token limited to 'web-*' must not rename its domain out of its own reach.
    a.require_domain(req.name, f"to rename domain '{ref}' to '{req.name}'", audit=False)
    return v.describe(await m.rename(ref, req.name))


@router.post("/domains/{ref}/wait")
async def wait(ref: str, req: WaitRequest, m: Manager) -> dict[str, Any]:
    rec = m.resolve(ref)
    await m.wait_stopped(rec.uuid, req.timeout)
    return {}


class SaveRequest(BaseModel):
    file: str
    keep: bool = False
    paused: bool = False


class RestoreRequest(BaseModel):
    file: str
    paused: bool = False
    name: str | None = None


@router.post("/domains/{ref}/save")
async def save(ref: str, req: SaveRequest, saves: Saves, a: Acc) -> dict[str, Any]:
    a.check_path(req.file, "save file")
    return await saves.save(ref, req.file, req.keep, req.paused)


@router.post("/restore", status_code=201)
async def restore(req: RestoreRequest, v: Views, saves: Saves, a: Acc) -> dict[str, Any]:
    a.check_path(req.file, "save file")

    def admit(cfg: DomainConfig) -> None:
        # The config comes from the file, which a guest may have written: its name and
        # paths pass the same checks as a create's.
        a.check_config(cfg, f"to restore domain '{cfg.name}'")

    rec = await saves.restore(req.file, req.paused, {"name": req.name} if req.name else None,
                              admit=admit)
    return v.describe(rec)
