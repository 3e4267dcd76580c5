"""Migration routes: the source side (for the local CLI) and the destination side (for
peer xeniads, reached over the authenticated TCP listener)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from xenia.api.access import Acc, Access
from xenia.api.deps import Incoming, Manager, Outgoing
from xenia.config.model import DomainConfig
from xenia.drivers.base import MigrationOptions
from xenia.errors import InvalidConfig, NotFound
from xenia.migration.receiver import Receiver
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
async def migration(job_id: str, out: Outgoing, a: Acc) -> dict[str, Any]:
    job = _job(out, job_id)
    a.require_domain(job.domain, f"to show migration {job_id}")
    return job.view()


@router.post("/migrations/{job_id}/cancel")
async def migration_cancel(job_id: str, out: Outgoing, a: Acc) -> dict[str, Any]:
    job = _job(out, job_id)
    a.require_domain(job.domain, f"to cancel migration {job_id}")
    await out.cancel(job)
    return job.view()


# -- destination side (called by the source host's xeniad) -------------------------------
def _admit(a: Access, record: Any, doing: str, paths: bool) -> None:
    """A peer's token may bring only domains it may act on, with paths this host allows."""
    try:
        cfg = DomainConfig.from_dict(record["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidConfig(f"Failed {doing}: the domain record is unreadable ({e})") from e
    if paths:
        a.check_config(cfg, f"{doing} '{cfg.name}'")
    else:
        a.require_domain(cfg.name, f"{doing} '{cfg.name}'")


def _incoming_job(into: Receiver, a: Access, job_id: str, doing: str) -> None:
    job = into.jobs.get(job_id)
    if job is not None:
        a.require_domain(job.name, f"{doing} migration {job_id}")


@router.post("/migrations/check")
async def check(req: CheckRequest, into: Incoming, a: Acc) -> dict[str, Any]:
    _admit(a, req.record, "to accept", paths=False)
    problems = await asyncio.to_thread(into.check, req.record, req.facts, req.copy_storage)
    return {"problems": problems}


@router.post("/migrations/incoming", status_code=201)
async def incoming(req: dict[str, Any], into: Incoming, a: Acc) -> dict[str, Any]:
    await asyncio.to_thread(_admit, a, req.get("record"), "to accept", True)
    return await into.prepare(req)


@router.post("/migrations/incoming/{job_id}/commit")
async def commit(job_id: str, into: Incoming, a: Acc) -> dict[str, Any]:
    _incoming_job(into, a, job_id, "to commit")
    return await into.commit(job_id)


@router.delete("/migrations/incoming/{job_id}")
async def abort(job_id: str, into: Incoming, a: Acc) -> dict[str, Any]:
    _incoming_job(into, a, job_id, "to abort")
    await into.abort(job_id)
    return {}


@router.get("/migrations/incoming/{job_id}")
async def incoming_status(job_id: str, into: Incoming, a: Acc) -> dict[str, Any]:
    _incoming_job(into, a, job_id, "to show")
    return into.status(job_id)
