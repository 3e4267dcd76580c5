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
from xenia.errors import BackendError, NotFound
from xenia.hostos.procfs import read_nofollow

router = APIRouter(prefix="/v1")
LOG_LIMIT = 1 << 20  # bytes of the console log's tail an answer carries


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
    text, rc = await asyncio.to_thread(con.run, Path(d["console"]), req.command, req.timeout,
                                       con.peer_of_view(d))
    return {"output": text, "rc": rc}


@router.get("/domains/{ref}/console/log")
async def log(ref: str, m: Manager, v: Views) -> dict[str, Any]:
    d = _paths(ref, m, v)
    path = Path(d["console_log"])
    # In the run dir of a QEMU, which owns it: its last LOG_LIMIT bytes, never through a
    # link (to /etc/shadow, say), never from a FIFO or a device (/dev/zero).
    try:
        data = await asyncio.to_thread(read_nofollow, path, LOG_LIMIT)
    except FileNotFoundError:
        data = b""
    except OSError as e:
        raise BackendError(f"Failed to read the console log of '{ref}': {path} is not a "
                           f"regular file ({e.strerror}); destroy and recreate the domain "
                           "if its QEMU replaced it") from None
    # Newlines as a text-mode read gives them (\r\n and \r as \n), as before.
    text = data.decode(errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    return {"text": text}
