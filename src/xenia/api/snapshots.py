"""Domain snapshot routes (snapshot-create/-list/-revert/-delete), thin handlers over
migration/snapshots.py. A snapshot outlives its domain, so its routes name the domain by
name (`{dom}`), checked by the handler, not resolved as a running domain."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from xenia.api.access import Acc
from xenia.api.deps import ClonesDep, Snapshots, Views
from xenia.config.model import DomainConfig

router = APIRouter(prefix="/v1")


class SnapshotCreate(BaseModel):
    name: str
    memory: bool = False


class CloneStart(BaseModel):
    name: str
    paused: bool = False


@router.post("/domains/{ref}/snapshots", status_code=201)
async def snapshot_create(ref: str, req: SnapshotCreate, s: Snapshots) -> dict[str, Any]:
    return await s.create(ref, req.name, req.memory)


@router.get("/domain-snapshots/{dom}")
def snapshot_list(dom: str, s: Snapshots, a: Acc) -> list[dict[str, Any]]:
    a.require_domain(dom, f"to list the snapshots of '{dom}'", audit=False)
    return s.list_of(dom)


@router.post("/domain-snapshots/{dom}/{snap}/revert")
async def snapshot_revert(dom: str, snap: str, s: Snapshots, a: Acc) -> dict[str, Any]:
    a.require_domain(dom, f"to revert '{dom}' to snapshot '{snap}'")
    return await s.revert(dom, snap)


@router.delete("/domain-snapshots/{dom}/{snap}")
async def snapshot_delete(dom: str, snap: str, s: Snapshots, a: Acc) -> dict[str, Any]:
    a.require_domain(dom, f"to delete snapshot '{snap}' of '{dom}'")
    await s.delete(dom, snap)
    return {}


@router.post("/domain-snapshots/{dom}/{snap}/start", status_code=201)
async def clone_start(dom: str, snap: str, req: CloneStart, c: ClonesDep, v: Views,
                      a: Acc) -> dict[str, Any]:
    """`xenia create --from DOM@SNAP`: a new domain from a booted snapshot."""
    a.require_domain(dom, f"to start a clone of '{dom}'", audit=False)

    def admit(cfg: DomainConfig) -> None:
        a.check_config(cfg, f"to create domain '{cfg.name}'")

    rec = await c.start(f"{dom}@{snap}", req.name, req.paused, admit=admit)
    return v.describe(rec)
