"""Migration routes: the source side (for the local CLI) and the destination side (for
peer xeniads, reached over the authenticated TCP listener)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from xenia.api.access import Acc, Access
from xenia.api.deps import Manager
from xenia.config.model import DomainConfig
from xenia.errors import InvalidConfig, NotFound
from xenia.host.manager import DomainManager
from xenia.migration.sender import MigrationJob, MigrationOptions

router = APIRouter(prefix="/v1")


class CheckRequest(BaseModel):
    record: dict[str, Any]
    facts: dict[str, Any] = {}
    copy_storage: bool = False


@router.post("/domains/{ref}/migrate", status_code=202)
async def migrate(ref: str, req: MigrationOptions, m: Manager) -> dict[str, Any]:
    # The request body is the options themselves (FastAPI validates the dataclass).
    job = await m.sender.start(ref, req)
    return job.view()


@router.post("/domains/{ref}/migrate/cancel")
async def migrate_cancel(ref: str, m: Manager) -> dict[str, Any]:
    rec = m.resolve(ref)
    job = m.sender.job_for(rec.uuid)
    if job is None:
        raise NotFound(f"Failed to cancel: '{rec.name}' is not being migrated")
    await m.sender.cancel(job)
    return job.view()


def _job(m: DomainManager, job_id: str) -> MigrationJob:
    job = m.sender.jobs.get(job_id)
    if job is None:
        raise NotFound(f"Failed to find migration {job_id}")
    return job


@router.get("/migrations/{job_id}")
async def migration(job_id: str, m: Manager, a: Acc) -> dict[str, Any]:
    job = _job(m, job_id)
    a.require_domain(job.domain, f"to show migration {job_id}")
    return job.view()


@router.post("/migrations/{job_id}/cancel")
async def migration_cancel(job_id: str, m: Manager, a: Acc) -> dict[str, Any]:
    job = _job(m, job_id)
    a.require_domain(job.domain, f"to cancel migration {job_id}")
    await m.sender.cancel(job)
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


def _incoming_job(m: DomainManager, a: Access, job_id: str, doing: str) -> None:
    job = m.receiver.jobs.get(job_id)
    if job is not None:
        a.require_domain(job.name, f"{doing} migration {job_id}")


@router.post("/migrations/check")
async def check(req: CheckRequest, m: Manager, a: Acc) -> dict[str, Any]:
    import asyncio

    _admit(a, req.record, "to accept", paths=False)
    problems = await asyncio.to_thread(m.receiver.check, req.record, req.facts,
                                       req.copy_storage)
    return {"problems": problems}


@router.post("/migrations/incoming", status_code=201)
async def incoming(req: dict[str, Any], m: Manager, a: Acc) -> dict[str, Any]:
    import asyncio

    await asyncio.to_thread(_admit, a, req.get("record"), "to accept", True)
    return await m.receiver.prepare(req)


@router.post("/migrations/incoming/{job_id}/commit")
async def commit(job_id: str, m: Manager, a: Acc) -> dict[str, Any]:
    _incoming_job(m, a, job_id, "to commit")
    return await m.receiver.commit(job_id)


@router.delete("/migrations/incoming/{job_id}")
async def abort(job_id: str, m: Manager, a: Acc) -> dict[str, Any]:
    _incoming_job(m, a, job_id, "to abort")
    await m.receiver.abort(job_id)
    return {}


@router.get("/migrations/incoming/{job_id}")
async def incoming_status(job_id: str, m: Manager, a: Acc) -> dict[str, Any]:
    _incoming_job(m, a, job_id, "to show")
    return m.receiver.status(job_id)
