"""HA routes: `xenia ha DOM on|off` and this member's HA view (cluster/agent.py).

On a host outside any cluster there is no agent: both answer NotSupported.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from xenia.errors import NotSupported

router = APIRouter(prefix="/v1")


class HASet(BaseModel):
    on: bool


def _agent(request: Request, doing: str) -> Any:
    agent = getattr(request.app.state, "ha", None)
    if agent is None:
        raise NotSupported(f"Failed {doing}: this host is no cluster member (HA restarts a "
                           "domain on another member; see docs/cluster.md)")
    return agent


@router.post("/domains/{ref}/ha")
async def set_ha(ref: str, req: HASet, request: Request) -> dict[str, Any]:
    agent = _agent(request, f"to turn HA {'on' if req.on else 'off'} for domain '{ref}'")
    rec = await agent.set_ha(ref, req.on)
    return {"name": rec.name, "uuid": rec.uuid, "ha": rec.config.ha}


@router.get("/ha")
def ha_status(request: Request) -> dict[str, Any]:
    return dict(_agent(request, "to show the HA state").status())
