"""Migration routes: the source side (for the local CLI) and the destination side (for
peer xeniads, reached over the authenticated TCP listener)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from xenia.api.deps import Incoming, Manager, Outgoing
from xenia.drivers.base import MigrationOptions
from xenia.errors import NotFound
from xenia.migration.sender import MigrationJob, Sender

router = APIRouter(prefix="/v1")


class CheckRequest(BaseModel):
    record: dict[str, Any]
    facts: dict[str, Any] = {}
    copy_storage: bool = False


@router.post("/domains/{ref}/migrate", status_code=202)
async def migrate(ref: str, req: MigrationOptions, out: Outgoing) -> dict[str, Any]:
    # The request body is the options themselves (FastAPI validates the dataclass).
    job = await out.start(ref, req)
    return job.view()


@router.post("/domains/{ref}/migrate/cancel")
async def migrate_cancel(ref: str, m: Manager, out: Outgoing) -> dict[str, Any]:
    rec = m.resolve(ref)
    job = out.job_for(rec.uuid)
    if job is None:
        raise NotFound(f"Failed to cancel: '{rec.name}' is not being migrated")
    await out.cancel(job)
    return job.view()


def _job(out: Sender, job_id: str) -> MigrationJob:
    job = out.jobs.get(job_id)
    if job is None:
        raise NotFound(f"Failed to find migration {job_id}")
    return job


@router.get("/migrations/{job_id}")
async def migration(job_id: str, out: Outgoing) -> dict[str, Any]:
    return _job(out, job_id).view()


@router.post("/migrations/{job_id}/cancel")
async def migration_cancel(job_id: str, out: Outgoing) -> dict[str, Any]:
    job = _job(out, job_id)
    await out.cancel(job)
    return job.view()


# -- destination side (called by the source host's xeniad) -------------------------------
@router.post("/migrations/check")
async def check(req: CheckRequest, into: Incoming) -> dict[str, Any]:
    problems = await asyncio.to_thread(into.check, req.record, req.facts, req.copy_storage)
    return {"problems": problems}


@router.post("/migrations/incoming", status_code=201)
async def incoming(req: dict[str, Any], into: Incoming) -> dict[str, Any]:
    return await into.prepare(req)


@router.post("/migrations/incoming/{job_id}/commit")
async def commit(job_id: str, into: Incoming) -> dict[str, Any]:
    return await into.commit(job_id)


@router.delete("/migrations/incoming/{job_id}")
async def abort(job_id: str, into: Incoming) -> dict[str, Any]:
    await into.abort(job_id)
    return {}


@router.get("/migrations/incoming/{job_id}")
async def incoming_status(job_id: str, into: Incoming) -> dict[str, Any]:
    return into.status(job_id)
