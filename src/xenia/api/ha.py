"""HA routes: `xenia ha DOM on|off` and this member's HA view (cluster/agent.py).

On a host outside any cluster there is no agent: both answer NotSupported.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from xenia.api.access import Acc
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
def ha_status(request: Request, a: Acc) -> dict[str, Any]:
    """This member's HA view; the restarts, decisions and fences name only the domains
    the caller's token may see."""
    st = dict(_agent(request, "to show the HA state").status())
    for key in ("restarts", "decisions"):
        st[key] = [r for r in st.get(key) or [] if a.sees(str(r.get("domain")))]
    st["fences"] = [{**f, "domains": [n for n in f.get("domains") or [] if a.sees(str(n))]}
                    for f in st.get("fences") or []]
    return st
