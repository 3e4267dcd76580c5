"""Console routes: a command run on a domain's serial console, and its console log, as
answers (`xenia console --run/--log/--wait` on a domain of another cluster member reach
them through api/forward.py). The interactive console stays a local socket."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from xenia.api.deps import Manager, Views
from xenia.errors import NotFound

router = APIRouter(prefix="/v1")


class RunRequest(BaseModel):
    command: str
    timeout: float = 60.0


def _paths(ref: str, m: Any, v: Any) -> dict[str, Any]:
    d: dict[str, Any] = v.describe(m.resolve(ref))
    if not d.get("console"):
        raise NotFound(f"Failed to reach the console of '{ref}': it has none running")
    return d


@router.post("/domains/{ref}/console/run")
async def run(ref: str, req: RunRequest, m: Manager, v: Views) -> dict[str, Any]:
    from xenia.cli import console as con

    d = _paths(ref, m, v)
    text, rc = await asyncio.to_thread(con.run, Path(d["console"]), req.command, req.timeout)
    return {"output": text, "rc": rc}


@router.get("/domains/{ref}/console/log")
async def log(ref: str, m: Manager, v: Views) -> dict[str, Any]:
    d = _paths(ref, m, v)
    try:
        text = await asyncio.to_thread(Path(d["console_log"]).read_text, errors="replace")
    except FileNotFoundError:
        text = ""
    return {"text": text}
